# dsmproxy image: static binary on a distroless base.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/dsmproxy ./cmd/dsmproxy

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/dsmproxy /usr/local/bin/dsmproxy
# Kafka bootstrap + node listeners, AMQP, AWS (SQS/SNS/Kinesis), admin.
EXPOSE 19092-19099 5673 4566 8790
# Alive: the process serves its admin listener (GET /healthz; distroless has no curl). Not
# /readyz: a broker outage would mark the proxy unhealthy, and an orchestrator that restarts
# unhealthy containers would cut every front's clients for it. It asks the default admin
# listener: change --admin here if the config moves it.
HEALTHCHECK --interval=15s --timeout=7s --start-period=10s \
  CMD ["/usr/local/bin/dsmproxy", "probe", "--live", "--admin", "127.0.0.1:8790"]
ENTRYPOINT ["/usr/local/bin/dsmproxy"]
CMD ["run", "--config", "/etc/dsmproxy/dsmproxy.yaml"]

# dsmproxy: `make demo` runs the embedded demo, `make test` the vet, staticcheck and race tests CI runs
# (.ci/run, which first installs the tests' peers and also validates docker-compose.yml).
GO          ?= go
GOBIN       := $(shell $(GO) env GOPATH)/bin
STATICCHECK := $(GOBIN)/staticcheck

.PHONY: test vet staticcheck unit demo bench build fuzz

test: vet staticcheck unit

vet:
	$(GO) vet ./...

$(STATICCHECK):
	$(GO) install honnef.co/go/tools/cmd/staticcheck@latest

staticcheck: $(STATICCHECK)
	$(STATICCHECK) ./...

unit:
	$(GO) test -race -count=1 -timeout 12m ./...

build:
	$(GO) build -o bin/dsmproxy ./cmd/dsmproxy

# Built, then run, not `go run`: go run exits 1 after Ctrl-C whatever the demo returns, and make
# then ends a clean stop with "Error 1".
demo: build
	./bin/dsmproxy demo $(DEMOFLAGS)

# Two runs. First every process shares every CPU, so the proxy's CPU is taken from the clients
# and the broker. Then --pin gives the proxy a CPU of its own, as it has on its own host or
# sidecar core: that table is the proxy's cost as deployed. --relay shows what a TCP hop that
# parses nothing costs in each. A million Kafka records a phase (dsmbench's default is 200,000)
# make each phase last seconds, not a fraction of one, and narrow the spread between rounds.
bench:
	$(GO) run ./cmd/dsmbench --relay --records 1000000
	@if [ "$$(nproc)" -ge 2 ]; then $(GO) run ./cmd/dsmbench --relay --pin --records 1000000; \
	else echo "make bench: one CPU here, so no run with the proxy on a CPU of its own (--pin)"; fi

# FUZZTIME per target; every decoder has one. Targets are discovered with `go test -list`.
# Minimizing each new interesting input is capped at 5 s (Go's default is 60 s, which stalls
# targets whose seeds are kilobytes, such as FuzzLz4Decode, for most of a short run).
# Go 1.26's fuzz coordinator can fail a target with "context deadline exceeded" when -fuzztime
# runs out while a worker is busy (go.dev/issue/75804, fixed in Go 1.27): such a run wrote no
# failing input, so it is reported as a coordinator flake and the next target runs. Any failure
# that wrote an input under testdata/fuzz, or that says anything else, stops the run.
FUZZTIME ?= 60s
fuzz:
	@set -e; out=$$(mktemp); trap 'rm -f $$out' EXIT; \
	for pkg in $$($(GO) list ./...); do \
	  dir=$$($(GO) list -f '{{.Dir}}' $$pkg); \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f ($(FUZZTIME))"; \
	    before=$$(ls $$dir/testdata/fuzz/$$f 2>/dev/null | wc -l); \
	    if $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 5s $$pkg >$$out 2>&1; then \
	      tail -n 3 $$out; \
	    else \
	      cat $$out; \
	      after=$$(ls $$dir/testdata/fuzz/$$f 2>/dev/null | wc -l); \
	      if [ "$$after" = "$$before" ] && grep -q '^    context deadline exceeded$$' $$out && ! grep -q -e 'panic' -e 'Failing input' $$out; then \
	        echo "   (coordinator flake, go.dev/issue/75804: no failing input written; not a finding)"; \
	      else \
	        exit 1; \
	      fi; \
	    fi; \
	  done; \
	done

# dsmproxy: `make demo` runs the embedded demo, `make test` runs every check CI runs.
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

demo:
	$(GO) run ./cmd/dsmproxy demo

bench:
	$(GO) run ./cmd/dsmbench

# FUZZTIME per target; every decoder has one. Targets are discovered with `go test -list`.
# Minimizing each new interesting input is capped at 5 s (Go's default is 60 s, which stalls
# targets whose seeds are kilobytes, such as FuzzLz4Decode, for most of a short run).
FUZZTIME ?= 60s
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f ($(FUZZTIME))"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 5s $$pkg; \
	  done; \
	done

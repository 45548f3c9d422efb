# sandbox-worker: plain Makefile, dependencies from pkg-config.
#   make                 build the binaries into $(BUILD)/
#   make test            build and run the whole suite (real redis-server, dockerd, s3rver)
#   make check           test + static analysis + format check
#   make bench           benchmarks (print numbers)
#   make SANITIZE=address,undefined test
#   make install PREFIX=/usr/local DESTDIR=   (binaries, man page, completions, systemd unit)
#   make uninstall PREFIX=/usr/local DESTDIR=

PREFIX ?= /usr/local
BINDIR = $(DESTDIR)$(PREFIX)/bin
MANDIR = $(DESTDIR)$(PREFIX)/share/man
BASHCOMPDIR = $(DESTDIR)$(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR = $(DESTDIR)$(PREFIX)/share/zsh/site-functions
UNITDIR = $(DESTDIR)$(PREFIX)/lib/systemd/system
INSTALL ?= install
PKG_CONFIG ?= pkg-config
CC ?= cc
BUILD ?= build
OPTIMIZATION ?= -O2
WERROR ?= 1

PKGS := hiredis libevent libevent_openssl libcurl libcjson libarchive openssl libzstd zlib
PKG_CFLAGS := $(shell $(PKG_CONFIG) --cflags $(PKGS))
PKG_LIBS := $(shell $(PKG_CONFIG) --libs $(PKGS))

WARNINGS := -Wall -Wextra -Wformat=2 -Wstrict-prototypes -Wmissing-prototypes \
	-Wold-style-definition -Wwrite-strings -Wpointer-arith -Wvla -Wshadow \
	-Wcast-qual -Wundef -Wno-missing-field-initializers -fno-common
ifeq ($(WERROR),1)
WARNINGS += -Werror
endif

override CFLAGS += -std=c11 -D_GNU_SOURCE -g $(OPTIMIZATION) $(WARNINGS) -I. $(PKG_CFLAGS) -MMD -MP
override LDLIBS += $(PKG_LIBS) -lm

ifneq ($(SANITIZE),)
override CFLAGS += -fsanitize=$(SANITIZE) -fno-sanitize-recover=$(SANITIZE) -fno-omit-frame-pointer
override LDFLAGS += -fsanitize=$(SANITIZE)
endif

# Every .c in a module folder is part of the core library, except the mains.
CORE_SRC := $(wildcard lib/*.c queue/*.c providers/*.c worker/*.c ctl/*.c)
MAIN_SRC := worker/main.c ctl/sandboxctl.c ctl/dump_scripts.c
CORE_SRC := $(filter-out $(MAIN_SRC),$(CORE_SRC))
AGENT_SRC := $(filter-out agent/fuzz_%.c,$(wildcard agent/*.c))
TEST_SUPPORT_SRC := $(wildcard tests/support/*.c)
TEST_SRC := $(wildcard tests/unit/test_*.c tests/integration/test_*.c)
BENCH_SRC := $(wildcard tests/bench/bench_*.c)

obj = $(patsubst %.c,$(BUILD)/%.o,$(1))
CORE_OBJ := $(call obj,$(CORE_SRC))
AGENT_OBJ := $(call obj,$(AGENT_SRC))
SUPPORT_OBJ := $(call obj,$(TEST_SUPPORT_SRC))
TEST_BIN := $(patsubst %.c,$(BUILD)/%,$(TEST_SRC))
BENCH_BIN := $(patsubst %.c,$(BUILD)/%,$(BENCH_SRC))
CORE_LIB := $(BUILD)/libsandbox.a

BINS := $(BUILD)/sandbox-worker
ifneq ($(wildcard ctl/sandboxctl.c),)
BINS += $(BUILD)/sandboxctl
endif
ifneq ($(AGENT_SRC),)
BINS += $(BUILD)/sandbox-agent
endif

.PHONY: all test check bench install uninstall clean format format-check lint hdr-check demo \
	fuzz fuzz-agent fuzz-worker fuzz-connect
all: $(BINS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(CORE_LIB): $(CORE_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && $(AR) rcs $@ $^

$(BUILD)/sandbox-worker: $(BUILD)/worker/main.o $(CORE_LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/sandboxctl: $(BUILD)/ctl/sandboxctl.o $(CORE_LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# Prints the Lua scripts and key patterns as JSON; clients/node generates its script module
# from it (one source of truth for the scripts).
$(BUILD)/dump_scripts: $(BUILD)/ctl/dump_scripts.o $(CORE_LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# --as-needed: the agent uses none of libcurl, OpenSSL or hiredis, so it does not load them.
$(BUILD)/sandbox-agent: $(AGENT_OBJ) $(CORE_LIB)
	$(CC) $(LDFLAGS) -Wl,--as-needed -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: $(BUILD)/tests/%.o $(SUPPORT_OBJ) $(CORE_LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/bench/%: $(BUILD)/tests/bench/%.o $(SUPPORT_OBJ) $(CORE_LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# tests/run.sh runs every test binary and script, prints skips, and fails on any failure.
# Helpers the Node client's tests use (tests/clients/test_node_client.sh).
CLIENT_TEST_BIN := $(BUILD)/dump_scripts $(BUILD)/tests/clients/scripted_worker

test: $(BINS) $(TEST_BIN) $(CLIENT_TEST_BIN)
	BUILD=$(BUILD) ./tests/run.sh

bench: $(BINS) $(BENCH_BIN)
	BUILD=$(BUILD) ./tests/bench/run.sh

check: test lint format-check hdr-check fuzz-agent

# Every fuzz target, each for a bounded time (clang).
fuzz: fuzz-agent fuzz-worker fuzz-connect
# The agent: request parsing, archive extraction with an escape oracle, the connection code;
# FUZZ_SECONDS per target (default 30, 0: replay the corpora only), FUZZ_TARGETS to pick some.
fuzz-agent:
	BUILD=$(BUILD) FUZZ_SECONDS=$${FUZZ_SECONDS:-30} sh tests/agent/fuzz.sh

# Bounded libFuzzer runs of the worker's job parser, the RESP replies it consumes, the agent's
# NDJSON output frames and Docker's multiplexed exec stream (clang), each FUZZ_SECONDS
# (default 60); crashes go to tests/fuzz/regress/.
fuzz-worker:
	BUILD=$(BUILD) FUZZ_SECONDS=$${FUZZ_SECONDS:-60} sh tests/fuzz/run.sh

# The E2B envd Connect envelope decoder (any split decodes as the whole input).
fuzz-connect:
	BUILD=$(BUILD) FUZZ_SECONDS=$${FUZZ_SECONDS:-30} sh tests/fuzz/fuzz_connect.sh

lint:
	cppcheck --quiet --error-exitcode=1 --enable=warning,style,performance,portability \
		--inline-suppr --suppress=missingIncludeSystem -I. \
		lib queue providers worker ctl agent
	clang-tidy --quiet $(CORE_SRC) $(MAIN_SRC) $(AGENT_SRC) -- $(filter-out -MMD -MP,$(CFLAGS))

FORMAT_FILES = $(shell git ls-files '*.c' '*.h')
format:
	clang-format -i $(FORMAT_FILES)
format-check:
	clang-format --dry-run --Werror $(FORMAT_FILES)

hdr-check:
	@for h in $$(git ls-files 'lib/*.h' 'queue/*.h' 'providers/*.h' 'worker/*.h' 'ctl/*.h' 'agent/*.h'); do \
		echo "#include \"$$h\"" | $(CC) $(filter-out -MMD -MP,$(CFLAGS)) -x c -fsyntax-only - || exit 1; \
	done; echo "headers are self-contained"

demo:
	./scripts/demo.sh

install: $(BINS) $(BUILD)/sandboxctl.1 $(BUILD)/sandboxctl.bash $(BUILD)/_sandboxctl
	$(INSTALL) -d $(BINDIR) $(MANDIR)/man1 $(BASHCOMPDIR) $(ZSHCOMPDIR) $(UNITDIR)
	$(INSTALL) -m 0755 $(BINS) $(BINDIR)/
	$(INSTALL) -m 0644 $(BUILD)/sandboxctl.1 $(MANDIR)/man1/sandboxctl.1
	$(INSTALL) -m 0644 $(BUILD)/sandboxctl.bash $(BASHCOMPDIR)/sandboxctl
	$(INSTALL) -m 0644 $(BUILD)/_sandboxctl $(ZSHCOMPDIR)/_sandboxctl
	sed 's|@BINDIR@|$(PREFIX)/bin|g' deploy/systemd/sandbox-worker.service > $(UNITDIR)/sandbox-worker.service
	chmod 0644 $(UNITDIR)/sandbox-worker.service

uninstall:
	rm -f $(addprefix $(BINDIR)/,$(notdir $(BINS))) $(MANDIR)/man1/sandboxctl.1 \
		$(BASHCOMPDIR)/sandboxctl $(ZSHCOMPDIR)/_sandboxctl $(UNITDIR)/sandbox-worker.service

# The man page and completions come from sandboxctl's own help text.
$(BUILD)/sandboxctl.1: $(BUILD)/sandboxctl
	$(BUILD)/sandboxctl --man > $@
$(BUILD)/sandboxctl.bash: $(BUILD)/sandboxctl
	$(BUILD)/sandboxctl --completion bash > $@
$(BUILD)/_sandboxctl: $(BUILD)/sandboxctl
	$(BUILD)/sandboxctl --completion zsh > $@

clean:
	rm -rf $(BUILD) build-*

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
.SECONDARY:

# Delivery under faults: worker processes SIGKILLed, Redis killed and restarted, then checks
# (tests/support/chaos.h). make chaos CHAOS_ARGS="--seed N --workers N --jobs N --threads N
# --seconds N"; a bounded run is part of make test (tests/integration/test_chaos.c).
.PHONY: chaos
chaos: $(BUILD)/tests/chaos/chaos
	./$(BUILD)/tests/chaos/chaos $(CHAOS_ARGS)

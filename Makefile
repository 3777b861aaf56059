# Two commands, each doing its own set-up on a fresh machine:
#   make run    the main job: the seed walkthrough on the simulated host (the model)
#   make test   every test: on the host and, at the same time, the kernel tests in one VM boot
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ABSBIN := $(abspath $(BIN))

# Debian packages the tests use: Debian's own thin tools check the metadata files thinsim
# writes; QEMU, Debian's kernel (it has dm-thin), dmsetup, kmod and busybox-static let
# `thinsim vm` boot that kernel and drive it (the guest runs the host's own programs); strace shows
# the write(2)s the real thin tools make, which the ports must make too; xfsprogs and fdisk
# (fdisk, sfdisk) are programs the tests run on simulated devices (issue 13).
DEB_PACKAGES := thin-provisioning-tools qemu-system-x86 linux-image-amd64 dmsetup kmod e2fsprogs strace \
	busybox-static xfsprogs fdisk
# The kernel tests' limit: more than twice what they need (1875 s beside the host tests in CI,
# with the file-system and plugin tests), inside CI's 90 minutes with the host tests.
VM_TIMEOUT ?= 4200
# The differential test's examples in the VM (its own default is 200): most of the VM's time
# goes to it (790 s for 100 in CI), and a whole make test took 56 minutes in CI with 200; 60
# since two labs run on the real kernel there too (issue 14, several minutes).
DIFF_EXAMPLES ?= 60

.PHONY: run test test-host test-kernel bench clean system-deps labs labs-html

# Installed when missing and we are root with apt (as on CI); otherwise the tests that need
# them say what is missing.
system-deps:
	@missing=$$(for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing Debian packages:" $$missing; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
				apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
		else \
			echo "missing Debian packages (the tests that need them will say so):" $$missing >&2; \
		fi; \
	fi

$(BIN)/thinsim: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,vm,labs]'
	touch $@

# The seed study's walkthrough on the simulated host, in a fresh folder that is removed after.
run: $(BIN)/thinsim
	@work=$$(mktemp -d /tmp/thinsim-run.XXXXXX) && cd "$$work" && \
		"$(CURDIR)/$(BIN)/thinsim" run "$(CURDIR)/examples/seed-walkthrough.sh"; \
		rc=$$?; rm -rf "$$work"; exit $$rc

# The two halves run at once, each on one of the machine's two cores (the VM's emulated CPU is
# one thread): one after the other, make test took 64 minutes in CI.  Each half's output is
# printed whole when it ends.
test:
	@$(MAKE) --no-print-directory -j2 --output-sync=target test-host test-kernel

# Everything but the kernel tests, on this host.
test-host: $(BIN)/thinsim system-deps
	$(BIN)/python -m pytest -q -m "not kernel"

# The kernel tests (marker `kernel`) in one boot of Debian's kernel (thinsim vm), with the
# checkout writable in the guest and a RAM disk for the recorded host scripts' ext4
# (thinsim/host/real.py).  The test files are collected here (natively: importing every test
# module under emulation took minutes); -v prints each test as it ends, --durations where the
# VM's time went, for tuning the budget.  Unbuffered, and with every thread's stack printed when
# a test has run 1200 s (three times the slowest), so that a VM killed at its limit has said
# where it was.  A boot that stops early is retried by thinsim vm itself (BOOT_TIMEOUT).
# In CI (CI=true) a VM that cannot boot fails the run, and so
# does a kernel test that finds no kernel; elsewhere a missing VM is reported and skipped.
test-kernel: $(BIN)/thinsim system-deps
	@if [ -z "$${CI:-}" ] && ! PATH="$(ABSBIN):$$PATH" $(BIN)/python -c \
		'from thinsim.vm import check_tools, kernel_image; check_tools(); kernel_image()'; then \
		echo "kernel tests not run: no VM here (see above); CI runs them" >&2; \
		exit 0; \
	fi; \
	files=$$($(BIN)/python -m pytest --collect-only -q -p no:cacheprovider -m kernel | \
		sed -n 's/::.*//p' | sort -u | tr '\n' ' '); \
	if [ -z "$$files" ]; then echo "no kernel tests collected" >&2; exit 1; fi; \
	start=$$(date +%s); \
	PATH="$(ABSBIN):$$PATH" $(BIN)/thinsim vm --timeout $(VM_TIMEOUT) --rwdir $(CURDIR) \
		--module "brd rd_nr=1 rd_size=2097152" -- \
		"PYTHONUNBUFFERED=1 CI=$${CI:-} THINSIM_DIFF_EXAMPLES=$(DIFF_EXAMPLES) $(ABSBIN)/python -m pytest -v -p no:cacheprovider --durations=12 -o faulthandler_timeout=1200 -m kernel $$files"; \
	status=$$?; \
	echo "kernel tests in the VM: exit $$status, $$(( $$(date +%s) - start )) s wall time"; \
	exit $$status

# The labs (notebooks/): `labs` runs each on the model and keeps its outputs in the notebook
# (tests/test_notebooks.py checks that they are a fresh run's); `labs-html` writes a static page
# of each, as kept, into build/labs/.  `$(BIN)/jupyter lab notebooks/` opens them.
labs: $(BIN)/thinsim
	$(BIN)/thinsim labs

labs-html: $(BIN)/thinsim
	$(BIN)/thinsim labs --html build/labs

bench: $(BIN)/thinsim
	$(BIN)/thinsim bench --json

clean:
	rm -rf $(VENV) build *.egg-info

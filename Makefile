# mediation-backup: `make demo` and `make test` work on a fresh Debian/Ubuntu machine with Python 3.11+.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CTL := $(VENV)/bin/backupctl
STATE := .platform
DEMO_TABLE ?= mnaas.customer_traffic
DEMO_ROWS ?= 50000
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: deps compose-deps all-deps demo test test-unit compose-test wheelhouse lock bench fault-trials faults up down status worker clean

# OS packages, installed only when missing, with one apt-get update for all of them: the platform's (deps), and
# also the container engine's for make compose-test (compose-deps: Debian's Docker 20.10, docker-compose 1.29,
# debootstrap for the local base image; dockerd is not started by apt: tests/compose starts its own).
PLATFORM_PACKAGES = \
	command -v java >/dev/null || missing="$$missing openjdk-17-jre-headless"; \
	command -v javac >/dev/null || missing="$$missing openjdk-17-jdk-headless"; \
	command -v mvn >/dev/null || missing="$$missing maven"; \
	[ -x /usr/sbin/sshd ] || missing="$$missing openssh-server"; \
	command -v ssh-keygen >/dev/null || missing="$$missing openssh-client"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	command -v chromium >/dev/null || missing="$$missing chromium";
COMPOSE_PACKAGES = \
	command -v dockerd >/dev/null || missing="$$missing docker.io"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	command -v debootstrap >/dev/null || missing="$$missing debootstrap";
INSTALL_MISSING = \
	if [ -n "$$missing" ]; then \
	  echo "installing OS packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

deps:
	@missing=""; $(PLATFORM_PACKAGES) $(INSTALL_MISSING)

compose-deps:
	@missing=""; $(COMPOSE_PACKAGES) $(INSTALL_MISSING)

# Both, for make test: one apt-get update on a fresh machine instead of two.
all-deps:
	@missing=""; $(PLATFORM_PACKAGES) $(COMPOSE_PACKAGES) $(INSTALL_MISSING)

$(VENV)/.installed: requirements.txt requirements-test.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements-test.txt
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

venv: $(VENV)/.installed

up: deps venv
	$(CTL) platform up

down:
	-$(CTL) platform down

status:
	$(CTL) platform status

# The whole product on the embedded platform (Redis, HDFS, YARN, metastore, Spark, sshd, sinks): inputs for the
# three workflows, one worker, each workflow with its progress, then where every result lies. The worker is
# stopped afterwards; the platform stays up (make down stops it).
demo: up
	$(CTL) demo prepare --table $(DEMO_TABLE) --rows $(DEMO_ROWS)
	@mkdir -p $(STATE)/logs
	@$(CTL) worker -c 2 -n demo@%h > $(STATE)/logs/demo-worker.log 2>&1 & echo $$! > $(STATE)/demo-worker.pid
	@trap 'kill $$(cat $(STATE)/demo-worker.pid) 2>/dev/null; rm -f $(STATE)/demo-worker.pid' EXIT; rc=0; \
	  echo; echo "== edge-export: 5-month slice of $(DEMO_TABLE) -> ;-CSV -> gzip -> edge node"; \
	  $(CTL) run edge-export $(DEMO_TABLE) --wait --timeout 600 || rc=1; \
	  echo; echo "== customer-files: every customer's new files -> HDFS and the edge node -> Hive counts"; \
	  $(CTL) run customer-files --wait --timeout 600 || rc=1; \
	  echo; echo "== table-backup: CSV folder on HDFS -> partitioned mnaas.traffic_details_bkp"; \
	  $(CTL) run table-backup mnaas.traffic_details --source hdfs:///data/mnaas/traffic/details/ --wait --timeout 600 || rc=1; \
	  $(CTL) demo summary --table $(DEMO_TABLE); echo; echo "Recent runs:"; $(CTL) jobs --limit 5; exit $$rc

# Everything but the long fault scenarios (marker faults: make faults runs them), the compose end-to-end
# test included (it needs root: it starts its own dockerd).  Without root: make test COMPOSE_TEST=no.
# Three pytest sessions, each with its own services, ports and temp folder (most of each is waiting on services):
# - the suite, less SIDE_SUITE;
# - beside it, the compose test, then SIDE_SUITE on a platform of its own (ports and Redis offset by
#   SIDE_PORT_OFFSET): the compose build and stack saturate both cores for the suite's first minutes, after which
#   the suite alone left the machine 10-90 % idle, waiting on one Spark statement at a time.
# Their output follows the suite's; make test fails if any fails.
SIDE_SUITE := tests/integration/test_restore_edge_export.py tests/integration/test_restore_table_backup.py \
	tests/integration/test_table_backup.py tests/integration/test_table_backup_submit.py tests/integration/test_yarn.py
SIDE_PORT_OFFSET := 1000
COMPOSE_TEST ?= yes
ifeq ($(COMPOSE_TEST),no)
TEST_DEPS := deps venv
else ifeq ($(COMPOSE_TEST),yes)
TEST_DEPS := all-deps venv
else
$(error COMPOSE_TEST must be yes or no, not '$(COMPOSE_TEST)')
endif
test: $(TEST_DEPS)
	@mkdir -p $(STATE)/logs; rc=0; rm -f $(STATE)/logs/compose-test.rc $(STATE)/logs/side-suite.rc; \
	( if [ "$(COMPOSE_TEST)" = yes ]; then \
	    MB_COMPOSE_STATE=$(abspath $(COMPOSE_STATE)) $(PY) -m pytest -q -p no:cacheprovider --durations=10 \
	      -m compose tests/compose > $(STATE)/logs/compose-test.log 2>&1; echo $$? > $(STATE)/logs/compose-test.rc; \
	  fi; \
	  MB_TEST_PORT_OFFSET=$(SIDE_PORT_OFFSET) $(PY) -m pytest -q -p no:cacheprovider --durations=10 \
	    -m "not faults and not compose" $(SIDE_SUITE) > $(STATE)/logs/side-suite.log 2>&1; \
	  echo $$? > $(STATE)/logs/side-suite.rc ) & side_pid=$$!; \
	$(PY) -m pytest -q --durations=40 -m "not faults and not compose" $(addprefix --ignore=,$(SIDE_SUITE)) tests \
	  || rc=$$?; \
	wait $$side_pid; side_rc=$$(cat $(STATE)/logs/side-suite.rc 2>/dev/null || echo missing); \
	echo; echo "== $(words $(SIDE_SUITE)) files of the suite in a session of their own (SIDE_SUITE, ran beside it): exit $$side_rc"; \
	cat $(STATE)/logs/side-suite.log; \
	if [ "$(COMPOSE_TEST)" = yes ]; then \
	  compose_rc=$$(cat $(STATE)/logs/compose-test.rc 2>/dev/null || echo missing); \
	  echo; echo "== compose end-to-end test (tests/compose, ran beside the suite): exit $$compose_rc"; \
	  cat $(STATE)/logs/compose-test.log; \
	else compose_rc=0; fi; \
	[ $$rc = 0 ] && [ "$$side_rc" = 0 ] && [ "$$compose_rc" = 0 ]

# docker-compose.yml end to end (tests/compose/test_stack.py): a private dockerd with host networking only,
# the local Debian base image, the wheelhouse and Hadoop's jars (cached under $(COMPOSE_STATE)), the images, the
# checks of the stack, then everything stopped and removed.  COMPOSE_STATE=... moves the cache (inside the
# project: it holds the build context's wheelhouse); rm -rf it for a run from scratch.
COMPOSE_STATE ?= .compose
compose-test: deps compose-deps venv
	MB_COMPOSE_STATE=$(abspath $(COMPOSE_STATE)) $(PY) -m pytest -q -s -m compose tests/compose

# The pinned artifacts the images install (and the wheels built here from the locked sdists: deploy/wheelhouse.py),
# and Hadoop's jars for the tryout image (Maven Central), for a build outside the tests (docker compose build).
wheelhouse: venv
	$(PY) deploy/wheelhouse.py $(COMPOSE_STATE)/wheelhouse
	$(PY) -m local_platform.hadoop install --home $(COMPOSE_STATE)/hadoop

# Regenerate the hash-pinned locks after changing a pin in requirements*.txt.
lock: venv
	$(PY) deploy/lock.py

test-unit: venv
	$(PY) -m pytest -q tests/unit

bench: up
	$(PY) bench/run_all.py

# The tests marked faults, on a test session's own platform (15-21 minutes after make test; 17 m 08 s on 18969a0): one
# trial of each kind make test has no room for (a worker SIGKILL, sshd away, a black hole, a paused holder, a restore
# under a worker SIGKILL, a DataNode and the NameNode stopped, a YARN application killed, the Spark JVM restarted),
# the scripted HDFS scenarios (DataNode, NameNode, safe mode, permissions), the YARN cluster-mode backup with one
# application killed, and the longer outage scenarios (workers killed mid-copy, a black hole mid-transfer, a
# customer-files outage past its retry budget, the Redis primary killed at a random moment).  .ci/run runs it after
# make test, so CI keeps every fault kind alive; needs root (tmpfs, iptables).
fault-trials: deps venv
	$(PY) -m pytest -q -p no:cacheprovider --durations=20 -m faults tests

# fault-trials, then the fault campaign (bench/faults.py): 20 trials of each fault kind for each workflow it applies
# to, one JSON line per (kind, workflow), a line per trial on stderr.  Its HDFS kinds stop a DataNode or the
# NameNode and its YARN kind kills applications of the platform: nothing else may use the platform meanwhile.
# spark_restart (the Spark JVM killed) is not run on this shared platform: run it with a config of its own, e.g.
# BACKUP_CONFIG=own.yaml bench/faults.py --kinds spark_restart --own-platform.
FAULT_TRIALS ?= 20
faults: fault-trials
	$(MAKE) up
	$(PY) bench/faults.py --trials $(FAULT_TRIALS)

clean: down
	rm -rf $(STATE)

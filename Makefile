# meshd build, test and packaging. Targets that touch the system need root.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
PREFIX  ?= /usr/local
BIN     := bin/meshd
# Tools the tests drive; installed without recommends so apt does not pull
# in a kernel. The container runtimes (podman with its CNI backend,
# Debian's docker.io, runc) and busybox-static (the containers' rootfs)
# are for test/e2e's container tests and `make demo-containers`; systemd
# only for systemd-analyze, which checks packaging/meshd.service (nothing
# starts it).
TEST_PACKAGES := iproute2 iputils-ping netcat-openbsd tcpdump wireguard-tools iperf3 nftables containernetworking-plugins \
	podman docker.io runc busybox-static systemd

.PHONY: build deps demo demo-containers test test-unit fuzz vm-test install clean

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/meshd

# deps installs what the tests need; a no-op when everything is present.
deps:
	@missing=""; for p in $(TEST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	$(GO) mod download

demo: deps build
	./$(BIN) demo

# demo-containers starts real containers with podman (CNI) and Docker
# (meshd's network plugin) on namespace hosts and shows them reaching
# each other through the mesh: the end-to-end container tests, narrated.
demo-containers: deps
	@out=$$(mktemp); $(GO) test -count=1 -v -run '^Test(Podman|Docker)AcrossMesh$$' ./test/e2e/ >$$out 2>&1; rc=$$?; \
	grep -E '^(=== RUN|--- |    containers_test.go:[0-9]+:   |ok|FAIL|PASS)' $$out; \
	[ $$rc -eq 0 ] || tail -n 100 $$out; rm -f $$out; exit $$rc

# test runs everything: unit tests, the namespace tests and the end-to-end
# mesh tests. Run it as root; with CI=true nothing that needs root may skip.
test: deps
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 30m ./...
	$(MAKE) fuzz
	$(MAKE) vm-test

# fuzz runs each fuzz target for a bounded time on top of the corpus kept
# in testdata/fuzz (gossip comes from the network: the decoder must never
# crash or accept what it should not).
FUZZTIME ?= 20s
fuzz:
	$(GO) test ./mesh/ -run '^$$' -fuzz '^FuzzDecodeTags$$' -fuzztime $(FUZZTIME)
	$(GO) test ./identity/ -run '^$$' -fuzz '^FuzzParseCert$$' -fuzztime $(FUZZTIME)

# vm-test boots Debian's kernel (which has WireGuard) under qemu and runs
# the three-host scenario inside with mode auto (must pick kernel
# WireGuard) and userspace: the kernel path cannot be tested on a host
# kernel without the module.
vm-test:
	bash test/vm/run.sh

# test-unit runs only what needs no root.
test-unit:
	$(GO) test -count=1 ./config/... ./crypto/... ./mesh/... ./routes/... ./wgdev/... ./control/... ./cmd/... ./cni/... ./cnm/...

# install never touches an existing meshd.toml or gossip key; it ends with
# what an operator does next on this host.
install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/meshd
	install -d -m 0755 $(DESTDIR)/etc/meshd
	install -m 0644 config.example.toml $(DESTDIR)/etc/meshd/meshd.toml.example
	install -D -m 0644 packaging/meshd.service $(DESTDIR)/etc/systemd/system/meshd.service
	@echo
	@echo "meshd is installed. Next steps on this host:"
	@echo "  1. the gossip key, once per cluster (then copy the file to every host, mode 0600):"
	@echo "       (umask 077; $(PREFIX)/bin/meshd keygen gossip > /etc/meshd/gossip.key)"
	@echo "  2. the config: set node_name, bind_addr, join and segments, then check it:"
	@echo "       cp /etc/meshd/meshd.toml.example /etc/meshd/meshd.toml"
	@echo "       $(PREFIX)/bin/meshd check --config /etc/meshd/meshd.toml"
	@echo "  3. start it now and at every boot:"
	@echo "       systemctl daemon-reload && systemctl enable --now meshd"

clean:
	rm -rf bin

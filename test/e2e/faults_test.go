package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshd/meshd/control"
	"github.com/meshd/meshd/lab"
)

// repairPromise is how soon meshd puts back local state someone else
// removed (issue: self-healing).
const repairPromise = 2 * time.Second

// TestFaultInjection breaks a live three-host mesh in every way a real
// host does (a firewall reload, an operator's `ip rule del`, a deleted
// interface or socket, a descriptor flood, a duplicate node name, a cut
// cable) while pods talk, and checks that meshd restores its state within
// the promise, that pods answer again, that the repair is counted, and
// that not one plaintext pod packet crosses the underlay meanwhile. h1
// has a default route, so with its rules gone pod traffic would leave on
// the underlay.
func TestFaultInjection(t *testing.T) {
	l := newLab(t, lab.Spec{Hosts: 4, Segments: []lab.SegmentSpec{blue}})
	h1, h2, h3, h4 := l.Host(1), l.Host(2), l.Host(3), l.Host(4)
	hosts := []*lab.Host{h1, h2, h3}
	for _, h := range hosts {
		start(t, h, "")
	}
	waitFor(t, 60*time.Second, "full connectivity", fullMesh(hosts, "blue"))
	// A default route through h2: what leaves h1's underlay in plaintext
	// reaches the wire, and the capture sees it.
	run(t, h1.NS(), "ip", "route", "add", "default", "via", h2.UnderlayAddr().String())

	capture, err := l.StartCapture(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// Live pod traffic, h1's pod to h2's and h3's, through every fault.
	traffic := startTraffic(h1, h2, h3)
	defer traffic.stop()

	type fault struct {
		name   string
		repair string // the repairs[] counter that must move
		inject func(t *testing.T)
		back   func() error // the state is back
	}
	table := "51800"
	faults := []fault{
		{"nft flush ruleset", "nftables",
			func(t *testing.T) { run(t, h1.NS(), "nft", "flush", "ruleset") },
			func() error { return hasTable(h1) }},
		{"nft delete table", "nftables",
			func(t *testing.T) { run(t, h1.NS(), "nft", "delete", "table", "inet", "meshd") },
			func() error { return hasTable(h1) }},
		{"ip rule del", "routes",
			func(t *testing.T) {
				// A burst of pod traffic runs through the window in which
				// the rules are gone: the guard must drop it, not the
				// wire carry it.
				burst := startPingBurst(t, h1.PodNS("blue"), h2.PodAddr("blue").String(), 2*time.Second)
				t.Cleanup(burst)
				time.Sleep(100 * time.Millisecond)
				run(t, h1.NS(), "ip", "rule", "del", "prio", "31000", "from", "10.42.0.0/16", "lookup", table)
				run(t, h1.NS(), "ip", "rule", "del", "prio", "31001", "to", "10.42.0.0/16", "lookup", table)
			},
			func() error { return hasRules(h1, table) }},
		{"ip route del", "routes",
			func(t *testing.T) { run(t, h1.NS(), "ip", "route", "del", "table", table, h2.Subnet("blue").String()) },
			func() error { return hasRoute(h1, table, h2.Subnet("blue").String()) }},
		{"ip link del", "interface",
			func(t *testing.T) { run(t, h1.NS(), "ip", "link", "del", h1.Interface()) },
			func() error {
				if _, err := lab.Exec(context.Background(), h1.NS(), "ip", "link", "show", h1.Interface()); err != nil {
					return err
				}
				return hasRoute(h1, table, h2.Subnet("blue").String())
			}},
		{"UAPI socket deleted", "uapi-socket",
			func(t *testing.T) {
				if err := os.Remove(h1.UAPISocket()); err != nil {
					t.Fatal(err)
				}
			},
			func() error {
				_, err := lab.Exec(context.Background(), h1.NS(), "wg", "show", h1.Interface(), "peers")
				return err
			}},
	}
	for _, f := range faults {
		t.Run(f.name, func(t *testing.T) {
			before := repairsOf(t, h1)[f.repair]
			began := time.Now()
			f.inject(t)
			took := waitFor(t, repairPromise+time.Second, f.name+": state restored", f.back)
			total := time.Since(began)
			waitFor(t, 10*time.Second, f.name+": repair counted", func() error {
				if n := repairsOf(t, h1)[f.repair]; n <= before {
					return fmt.Errorf("repairs[%s] = %d, was %d", f.repair, n, before)
				}
				return nil
			})
			waitFor(t, 15*time.Second, f.name+": pods answer again", fullMesh(hosts, "blue"))
			t.Logf("MEASURE repair after %s: %s", f.name, total.Round(time.Millisecond))
			if f.name == "ip rule del" {
				st, err := status(t, h1)
				if err != nil {
					t.Fatal(err)
				}
				if n := policyCounter(st, "no-plaintext"); n == 0 {
					t.Error("the no-plaintext guard dropped nothing while the rules were gone under a ping burst")
				} else {
					t.Logf("the no-plaintext guard dropped %d packets while the rules were gone", n)
				}
			}
			if total > repairPromise {
				t.Errorf("%s: restored after %s, promised %s", f.name, took, repairPromise)
			}
		})
	}

	t.Run("descriptor flood through the control socket", func(t *testing.T) {
		pid := h1.Pid()
		baseFD := countFDs(t, pid)
		var conns []net.Conn
		for range 3000 {
			c, err := net.Dial("unix", h1.ControlSocket())
			if err != nil {
				break // the listen backlog is full: the kernel refuses, not meshd
			}
			conns = append(conns, c)
		}
		t.Logf("%d silent connections open on the control socket", len(conns))
		time.Sleep(time.Second)
		if fds := countFDs(t, pid); fds > baseFD+40 {
			t.Errorf("meshd holds %d descriptors during the flood, %d before", fds, baseFD)
		}
		// The daemon still does its work: status answers, the device
		// answers, and a host leaving is followed.
		if _, err := status(t, h1); err != nil {
			t.Errorf("status during the flood: %v", err)
		}
		run(t, h1.NS(), "wg", "show", h1.Interface())
		if err := h3.Stop(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "h1 drops h3 during the flood", gone(t, h1, h3, "blue"))
		for _, c := range conns {
			c.Close()
		}
		waitFor(t, 20*time.Second, "descriptors back to the baseline", func() error {
			if fds := countFDs(t, pid); fds > baseFD+4 {
				return fmt.Errorf("%d descriptors, %d before", fds, baseFD)
			}
			return nil
		})
		start(t, h3, "")
		waitFor(t, 60*time.Second, "h3 back", fullMesh(hosts, "blue"))
	})

	t.Run("duplicate node name", func(t *testing.T) {
		// h4 claims h2's name. The cluster keeps the h2 it knows; the
		// newcomer must stop with an error naming the other host,
		// instead of running on without a cluster.
		cfg := strings.Replace(h4.Config(""), `node_name = "h4"`, `node_name = "h2"`, 1)
		if err := os.WriteFile(h4.ConfigPath(), []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := h4.Start(meshdBin); err != nil {
			t.Fatal(err)
		}
		err := h4.Wait(60 * time.Second)
		var ee interface{ ExitCode() int }
		if err == nil || !asExit(err, &ee) || ee.ExitCode() != 1 {
			t.Fatalf("the duplicate ended with %v, want exit status 1\n%s", err, tail(h4.Log(), 20))
		}
		if log := h4.Log(); !strings.Contains(log, h2.UnderlayAddr().String()) || !strings.Contains(log, "node_name") {
			t.Errorf("the duplicate's log does not name node_name and h2's address %s:\n%s", h2.UnderlayAddr(), tail(log, 20))
		}
		waitFor(t, 15*time.Second, "the mesh is undisturbed", fullMesh(hosts, "blue"))
	})

	t.Run("partition and heal", func(t *testing.T) {
		// h3's cable is pulled: the switch port goes down.
		run(t, l.SwitchNS(), "ip", "link", "set", h3.Name(), "down")
		waitFor(t, 30*time.Second, "h1 drops the unreachable h3", gone(t, h1, h3, "blue"))
		time.Sleep(5 * time.Second)
		run(t, l.SwitchNS(), "ip", "link", "set", h3.Name(), "up")
		took := waitFor(t, 90*time.Second, "h3 back after the heal", fullMesh(hosts, "blue"))
		t.Logf("MEASURE partition healed, full connectivity after %s", took.Round(time.Millisecond))
	})

	traffic.stop()
	if sent, answered := traffic.counts(); answered == 0 {
		t.Errorf("no pod traffic got through at all (%d sent)", sent)
	} else {
		t.Logf("live traffic: %d of %d pings answered across all faults", answered, sent)
	}
	if _, err := capture.Stop(); err != nil {
		t.Fatal(err)
	}
	// Pod addresses only ever cross the underlay inside WireGuard, whose
	// outer header carries the hosts' underlay addresses.
	n, err := capture.Count("net 10.42.0.0/16")
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("%d plaintext pod packets on the underlay during the faults", n)
	}

	t.Run("whole cluster stops at once", func(t *testing.T) {
		// A whole-site reboot: nobody is left to acknowledge a leave.
		var wg sync.WaitGroup
		took := make([]time.Duration, len(hosts))
		errs := make([]error, len(hosts))
		for i, h := range hosts {
			wg.Add(1)
			go func() {
				defer wg.Done()
				began := time.Now()
				errs[i] = h.Stop()
				took[i] = time.Since(began)
			}()
		}
		wg.Wait()
		for i, h := range hosts {
			t.Logf("MEASURE %s stopped in %s", h.Name(), took[i].Round(time.Millisecond))
			if errs[i] != nil {
				t.Errorf("%s: %v", h.Name(), errs[i])
			}
			if took[i] > 2*time.Second+500*time.Millisecond {
				t.Errorf("%s took %s to stop, bound is 2 s", h.Name(), took[i])
			}
		}
	})
}

func asExit(err error, target *interface{ ExitCode() int }) bool {
	ee, ok := err.(interface{ ExitCode() int })
	if ok {
		*target = ee
	}
	return ok
}

func policyCounter(st *control.Status, label string) uint64 {
	for _, c := range st.Policy {
		if c.Label == label {
			return c.Packets
		}
	}
	return 0
}

func repairsOf(t *testing.T, h *lab.Host) map[string]int {
	t.Helper()
	st, err := status(t, h)
	if err != nil {
		t.Fatal(err)
	}
	return st.Repairs
}

func hasTable(h *lab.Host) error {
	out, err := lab.Exec(context.Background(), h.NS(), "nft", "list", "chain", "inet", "meshd", "guard")
	if err != nil || !strings.Contains(out, "no-plaintext") {
		return fmt.Errorf("table inet meshd is not back: %v", err)
	}
	return nil
}

func hasRules(h *lab.Host, table string) error {
	out, err := lab.Exec(context.Background(), h.NS(), "ip", "rule", "show")
	if err != nil {
		return err
	}
	if strings.Count(out, "lookup "+table) < 2 {
		return fmt.Errorf("rules for table %s not back:\n%s", table, out)
	}
	return nil
}

func hasRoute(h *lab.Host, table, dst string) error {
	out, err := lab.Exec(context.Background(), h.NS(), "ip", "route", "show", "table", table, dst)
	if err != nil || !strings.Contains(out, "dev "+h.Interface()) {
		return fmt.Errorf("route %s not back in table %s: %q %v", dst, table, out, err)
	}
	return nil
}

func countFDs(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// traffic pings from one pod to others, five times a second, until
// stopped.
type traffic struct {
	stop   func()
	sent   atomic.Int64
	answer atomic.Int64
}

func (tr *traffic) counts() (int64, int64) { return tr.sent.Load(), tr.answer.Load() }

func startTraffic(from *lab.Host, to ...*lab.Host) *traffic {
	tr := &traffic{}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, dst := range to {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				tr.sent.Add(1)
				if lab.Ping(ctx, from.PodNS("blue"), dst.PodAddr("blue"), 1, time.Second) == nil {
					tr.answer.Add(1)
				}
				select {
				case <-ctx.Done():
				case <-time.After(200 * time.Millisecond):
				}
			}
		}()
	}
	var once sync.Once
	tr.stop = func() { once.Do(func() { cancel(); wg.Wait() }) }
	return tr
}

// startPingBurst pings every 5 ms for d in the background; the returned
// function stops it.
func startPingBurst(t *testing.T, ns, dst string, d time.Duration) func() {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns, "ping", "-q", "-n", "-i", "0.005", "-w", strconv.Itoa(int(d.Seconds())), dst)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return func() {
		cmd.Process.Kill()
		cmd.Wait()
	}
}

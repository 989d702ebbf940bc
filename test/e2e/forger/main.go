// Command forger joins a meshd cluster as a hostile member that holds the
// gossip key and announces whatever it is told: a certificate for another
// name, one from another CA, an expired one, a slice its certificate does
// not allow, or no signature at all. The trust tests run it in a
// namespace host and check that every real meshd refuses it.
package main

import (
	"encoding/base64"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshd/meshd/cluster"
	"github.com/meshd/meshd/identity"
	"github.com/meshd/meshd/mesh"
)

func main() {
	name := flag.String("name", "", "serf member name")
	bind := flag.String("bind", "", "gossip address")
	join := flag.String("join", "", "seed host:port")
	keyFile := flag.String("gossip-key-file", "", "base64 gossip key file")
	slices := flag.String("slices", "", "segment=cidr,...")
	certFile := flag.String("cert", "", "host.crt to announce")
	hostKey := flag.String("key", "", "host.key to sign with")
	unsigned := flag.Bool("unsigned", false, "announce without certificate or signature")
	flag.Parse()
	if err := run(*name, *bind, *join, *keyFile, *slices, *certFile, *hostKey, *unsigned); err != nil {
		fmt.Fprintln(os.Stderr, "forger:", err)
		os.Exit(1)
	}
}

func run(name, bind, join, keyFile, sliceList, certFile, hostKey string, unsigned bool) error {
	raw, err := os.ReadFile(keyFile)
	if err != nil {
		return err
	}
	gossipKey, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(raw)))
	if err != nil {
		return err
	}
	wgKey, _ := wgtypes.GeneratePrivateKey()
	addr := netip.MustParseAddr(bind)
	ann := mesh.Announcement{PublicKey: wgKey.PublicKey(), Endpoint: netip.AddrPortFrom(addr, 51820)}
	for _, s := range strings.Split(sliceList, ",") {
		seg, cidr, _ := strings.Cut(s, "=")
		ann.Slices = append(ann.Slices, mesh.Slice{Segment: seg, Prefix: netip.MustParsePrefix(cidr)})
	}
	var tags map[string]string
	if unsigned {
		tags, err = ann.Tags()
	} else {
		cert, key, lerr := identity.LoadHost(certFile, hostKey)
		if lerr != nil {
			return lerr
		}
		ann.Cert, ann.Counter = cert.Marshal(), 1
		tags, err = ann.SignedTags(name, func(p []byte) []byte { return identity.SignPayload(key, p) })
	}
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	m, err := cluster.Join(cluster.MembershipConfig{NodeName: name, BindAddr: addr, BindPort: 7946, AdvertiseAddr: addr,
		GossipKey: gossipKey, Tags: tags, Join: []string{join}, Log: log}, func() {})
	if err != nil {
		return err
	}
	fmt.Println("forger joined")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	return m.Leave()
}

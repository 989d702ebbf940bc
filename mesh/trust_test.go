package mesh

import (
	"bytes"
	"crypto/ed25519"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/identity"
)

type signer struct {
	cert *identity.Cert
	key  ed25519.PrivateKey
}

func newCA(t *testing.T) *identity.CA {
	ca, err := identity.InitCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func newSigner(t *testing.T, ca *identity.CA, name string) signer {
	pub, priv, _ := ed25519.GenerateKey(nil)
	now := time.Now().Truncate(time.Second)
	cert, err := ca.Sign(identity.Cert{Name: name, Segments: []string{"blue"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), PublicKey: pub})
	if err != nil {
		t.Fatal(err)
	}
	return signer{cert, priv}
}

func signedMember(t *testing.T, s signer, name string, seed byte, counter uint64, slices ...Slice) Member {
	ann := Announcement{PublicKey: testKey(t, seed), Endpoint: netip.MustParseAddrPort("192.0.2.9:51820"), Slices: slices,
		Cert: s.cert.Marshal(), Counter: counter}
	tags, err := ann.SignedTags(name, func(p []byte) []byte { return identity.SignPayload(s.key, p) })
	if err != nil {
		t.Fatal(err)
	}
	return Member{Name: name, Status: StatusAlive, Tags: tags}
}

func TestReplayStaysRefused(t *testing.T) {
	ca := newCA(t)
	h2 := newSigner(t, ca, "h2")
	local := localH1(t)
	local.CA, local.Now = ca.Public, time.Now()

	current := signedMember(t, h2, "h2", 2, 100, sl("blue", "10.42.2.0/24"))
	old := signedMember(t, h2, "h2", 3, 50, sl("blue", "10.42.2.0/24")) // an old key, recorded before a rotation

	st := Compute(local, []Member{current}, nil)
	if _, ok := st.PeerByName("h2"); !ok {
		t.Fatalf("the current announcement was refused: %+v", st.Rejected)
	}
	for pass := range 3 {
		st = Compute(local, []Member{old}, &st)
		if _, ok := st.PeerByName("h2"); ok {
			t.Fatalf("pass %d: a replayed older announcement was accepted", pass)
		}
		if len(st.Rejected) != 1 || !strings.Contains(st.Rejected[0].Reason, "replayed") {
			t.Fatalf("pass %d: rejected = %+v", pass, st.Rejected)
		}
	}
	// Even after h2 is gone for a while, the high-water mark holds.
	st = Compute(local, nil, &st)
	st = Compute(local, []Member{old}, &st)
	if _, ok := st.PeerByName("h2"); ok {
		t.Fatal("a replay was accepted after its author was briefly absent")
	}
}

func TestUnsignedAnnouncementsAreRefusedUnderACA(t *testing.T) {
	ca := newCA(t)
	local := localH1(t)
	local.CA, local.Now = ca.Public, time.Now()
	st := Compute(local, []Member{member(t, "h2", 2, "192.0.2.2:51820", sl("blue", "10.42.2.0/24"))}, nil)
	if len(st.Peers) != 0 || len(st.Rejected) != 1 || !strings.Contains(st.Rejected[0].Reason, "unsigned") {
		t.Fatalf("peers %+v rejected %+v", st.Peers, st.Rejected)
	}
	// A correctly signed announcement whose tags were edited afterwards.
	h2 := newSigner(t, ca, "h2")
	m := signedMember(t, h2, "h2", 2, 1, sl("blue", "10.42.2.0/24"))
	m.Tags["e"] = "198.51.100.7:51820"
	st = Compute(local, []Member{m}, nil)
	if len(st.Peers) != 0 || !strings.Contains(st.Rejected[0].Reason, "signature") {
		t.Fatalf("an edited announcement was not refused: %+v", st.Rejected)
	}
}

func TestWholeSegmentClaimDoesNotEvict(t *testing.T) {
	local := localH1(t)
	local.Segments[0].Subnet, local.Segments[0].ClaimedAt = pfx("10.42.9.0/24"), 50
	grab := member(t, "h0", 8, "192.0.2.8:51820", Slice{Segment: "blue", Prefix: pfx("10.42.0.0/16"), ClaimedAt: 1})
	st := Compute(local, []Member{grab}, nil)
	if len(st.Lost) != 0 {
		t.Fatal("announcing the whole segment evicted this host's claim")
	}
	if _, ok := st.PeerByName("h0"); ok {
		t.Fatal("a member claiming the whole segment became a peer")
	}
}

func TestRejectedClaimsDoNotBlockNewClaims(t *testing.T) {
	local := localH1(t)
	junk := Member{Name: "h0", Status: StatusAlive, Tags: map[string]string{"v": "1", "k": testKey(t, 7).String(), "e": "192.0.2.7:1", "s": "blue=0.0.0.0/0"}}
	honest := member(t, "h2", 2, "192.0.2.2:51820", sl("blue", "10.42.2.0/24"))
	st := Compute(local, []Member{junk, honest}, nil)
	taken := st.Slices("blue")
	if len(taken) != 1 || taken[0] != pfx("10.42.2.0/24") {
		t.Fatalf("slices to avoid = %v; want only the accepted h2's", taken)
	}
	if _, err := ChooseSlice(pfx("10.42.0.0/16"), 24, "h1", taken); err != nil {
		t.Fatalf("a junk announcement blocked claiming: %v", err)
	}
}

func TestEndpointsMustBeGlobalUnicast(t *testing.T) {
	for _, ep := range []string{"127.0.0.1:51820", "[::1]:51820", "169.254.1.1:51820", "[fe80::1%eth0]:51820", "255.255.255.255:51820", "224.0.0.1:1"} {
		tags := map[string]string{"v": "1", "k": testKey(t, 7).String(), "e": ep, "s": ""}
		if _, err := DecodeTags(tags); err == nil {
			t.Errorf("endpoint %s was accepted", ep)
		}
	}
}

// Transitional mode accepts the hosts not yet converted to the CA and
// counts them, and refuses everything strict mode refuses for a bad
// certificate or signature.
func TestTransitionalModeAcceptsUnsignedOnly(t *testing.T) {
	ca := newCA(t)
	local := localH1(t)
	local.CA, local.Now, local.AcceptUnsigned = ca.Public, time.Now(), true

	unsignedH2 := member(t, "h2", 2, "192.0.2.2:51820", sl("blue", "10.42.2.0/24"))
	signedH3 := signedMember(t, newSigner(t, ca, "h3"), "h3", 3, 1, sl("blue", "10.42.3.0/24"))
	st := Compute(local, []Member{unsignedH2, signedH3}, nil)
	for _, name := range []string{"h2", "h3"} {
		if _, ok := st.PeerByName(name); !ok {
			t.Fatalf("%s refused in transitional mode: %+v", name, st.Rejected)
		}
	}
	if got := st.Unsigned(); len(got) != 1 || got[0] != "h2" {
		t.Errorf("Unsigned() = %q, want [h2]", got)
	}

	foreign := signedMember(t, newSigner(t, newCA(t), "h4"), "h4", 4, 1, sl("blue", "10.42.4.0/24"))
	edited := signedMember(t, newSigner(t, ca, "h5"), "h5", 5, 1, sl("blue", "10.42.5.0/24"))
	edited.Tags["e"] = "198.51.100.7:51820"
	halfSigned := signedMember(t, newSigner(t, ca, "h6"), "h6", 6, 1, sl("blue", "10.42.6.0/24"))
	delete(halfSigned.Tags, "g")
	stolen := signedMember(t, newSigner(t, ca, "h9"), "h7", 7, 1, sl("blue", "10.42.7.0/24"))
	st = Compute(local, []Member{foreign, edited, halfSigned, stolen}, nil)
	want := map[string]string{"h4": "not signed by this cluster's CA", "h5": "bad announcement signature", "h6": "unsigned", "h7": `certificate is for "h9"`}
	if len(st.Peers) != 0 || len(st.Rejected) != len(want) {
		t.Fatalf("peers %+v, rejected %+v", st.Peers, st.Rejected)
	}
	for _, r := range st.Rejected {
		if !strings.Contains(r.Reason, want[r.Member]) {
			t.Errorf("%s refused for %q, want %q", r.Member, r.Reason, want[r.Member])
		}
	}
	if got := st.Unsigned(); len(got) != 0 {
		t.Errorf("Unsigned() = %q, want none", got)
	}

	// Once h3 has signed, an unsigned h3 is an impostor with the gossip
	// key, not a host still to be converted.
	st = Compute(local, []Member{signedH3}, nil)
	st = Compute(local, []Member{member(t, "h3", 8, "192.0.2.8:51820", sl("blue", "10.42.3.0/24"))}, &st)
	if _, ok := st.PeerByName("h3"); ok || len(st.Rejected) != 1 || !strings.Contains(st.Rejected[0].Reason, "signed its announcements before") {
		t.Fatalf("an unsigned h3 after a signed one: peers %+v rejected %+v", st.Peers, st.Rejected)
	}

	// Strict mode counts nothing: it refuses.
	local.AcceptUnsigned = false
	st = Compute(local, []Member{unsignedH2}, nil)
	if got := st.Unsigned(); len(got) != 0 || len(st.Rejected) != 1 {
		t.Errorf("strict: Unsigned() = %q, rejected %+v", got, st.Rejected)
	}
}

// With a CA, a certificate says which site a gateway speaks for, whether
// it may be a gateway at all, and which blocks it may announce: a forged
// or borrowed one is refused and listed, and the honest one still works.
func TestCertificatesBindSiteGatewayAndBlocks(t *testing.T) {
	ca := newCA(t)
	local := Local{Name: "a1", PublicKey: testKey(t, 1), Link: "mesh0", TableBase: 100, RulePriority: 31000,
		Site: "a", Gateway: true, CA: ca.Public, Now: time.Now(),
		Segments: []LocalSegment{{Name: "blue", CIDR: pfx("10.42.0.0/16"), Subnet: pfx("10.42.1.0/24"), Block: pfx("10.42.0.0/20")}}}
	gateway := func(name string, seed byte, certSite string, certGateway bool, pin, block string) Member {
		pub, priv, _ := ed25519.GenerateKey(nil)
		now := time.Now().Truncate(time.Second)
		cert, err := ca.Sign(identity.Cert{Name: name, Segments: []string{"blue"}, Subnets: []identity.Slice{{Segment: "blue", Prefix: pfx(pin)}},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), PublicKey: pub, Site: certSite, Gateway: certGateway})
		if err != nil {
			t.Fatal(err)
		}
		ann := Announcement{PublicKey: testKey(t, seed), Endpoint: netip.MustParseAddrPort("203.0.113.9:51820"), Site: "b",
			Role: Role{Gateway: true}, Blocks: []Slice{sl("blue", block)}, Cert: cert.Marshal(), Counter: 1}
		tags, err := ann.SignedTags(name, func(p []byte) []byte { return identity.SignPayload(priv, p) })
		if err != nil {
			t.Fatal(err)
		}
		return Member{Name: name, Status: StatusAlive, Tags: tags}
	}
	remote := []Member{
		gateway("b1", 2, "b", true, "10.42.16.0/20", "10.42.16.0/20"),  // honest
		gateway("c1", 3, "c", true, "10.42.16.0/20", "10.42.16.0/20"),  // certified for site c
		gateway("b2", 4, "b", false, "10.42.16.0/20", "10.42.16.0/20"), // not certified as a gateway
		gateway("b3", 5, "b", true, "10.42.16.0/20", "10.42.32.0/20"),  // a block outside its pin
	}
	st := ComputeTopology(local, nil, remote, nil)
	want := map[string]string{"c1": `certificate is for site "c"`, "b2": "does not allow", "b3": "block blue=10.42.32.0/20"}
	for _, r := range st.Rejected {
		if w, ok := want[r.Member]; ok && strings.Contains(r.Reason, w) {
			delete(want, r.Member)
		} else {
			t.Errorf("rejected %s: %s", r.Member, r.Reason)
		}
	}
	for name, w := range want {
		t.Errorf("%s was not refused (want a reason with %q)", name, w)
	}
	if len(st.Sites) != 1 || st.Sites[0].Name != "b" || st.Sites[0].Remote != "b1" {
		t.Errorf("sites %+v, want site b through b1", st.Sites)
	}
}

// Reports that drain a gateway are taken only from the site's probers,
// about the site's gateways, and under a CA only signed by the reporter's
// certified key.
func TestReportsComeOnlyFromProbersAndAreSigned(t *testing.T) {
	ca := newCA(t)
	now := time.Now().Truncate(time.Second)
	keys := map[string]ed25519.PrivateKey{}
	member := func(name string, seed byte, site string, gateway bool, slice, block string) Member {
		pub, priv, _ := ed25519.GenerateKey(nil)
		keys[name] = priv
		pin := slice
		if block != "" {
			pin = block
		}
		cert, err := ca.Sign(identity.Cert{Name: name, Segments: []string{"blue"}, Subnets: []identity.Slice{{Segment: "blue", Prefix: pfx(pin)}},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), PublicKey: pub, Site: site, Gateway: gateway})
		if err != nil {
			t.Fatal(err)
		}
		ann := Announcement{PublicKey: testKey(t, seed), Endpoint: netip.MustParseAddrPort("192.0.2.9:51820"), Site: site,
			Role: Role{Gateway: gateway}, Cert: cert.Marshal(), Counter: 1}
		if block != "" {
			ann.Blocks = []Slice{sl("blue", block)}
		} else {
			ann.Slices = []Slice{sl("blue", slice)}
		}
		tags, err := ann.SignedTags(name, func(p []byte) []byte { return identity.SignPayload(priv, p) })
		if err != nil {
			t.Fatal(err)
		}
		return Member{Name: name, Status: StatusAlive, Tags: tags}
	}
	local := Local{Name: "a1", PublicKey: testKey(t, 1), Link: "mesh0", TableBase: 100, RulePriority: 31000,
		Site: "a", Gateway: true, CA: ca.Public, Now: time.Now(),
		Segments: []LocalSegment{{Name: "blue", CIDR: pfx("10.42.0.0/16"), Subnet: pfx("10.42.1.0/24"), Block: pfx("10.42.0.0/20")}}}
	site := []Member{
		member("a2", 2, "a", true, "10.42.2.0/24", ""),
		member("a3", 3, "a", false, "10.42.3.0/24", ""),
		member("a4", 4, "a", false, "10.42.4.0/24", ""),
	}
	// a2 is in the WAN pool too, or it would not count as usable.
	remote := []Member{member("b1", 9, "b", true, "", "10.42.16.0/20"), member("a2", 2, "a", true, "", "10.42.0.0/20")}
	st := ComputeTopology(local, site, remote, nil)
	if !slices.Equal(st.Probers, []string{"a3", "a4"}) {
		t.Fatalf("probers %v, want a3 and a4; rejected %+v", st.Probers, st.Rejected)
	}
	signed := func(by string, r Report) []byte {
		return r.Encode(func(p []byte) []byte { return identity.SignPayload(keys[by], p) })
	}
	at := uint64(now.Unix())
	for _, tc := range []struct {
		what    string
		payload []byte
		want    string // "" accepted, else part of the error
	}{
		{"a prober's signed report", signed("a3", Report{"a3", "a2", at}), ""},
		{"about this gateway itself", signed("a4", Report{"a4", "a1", at}), ""},
		{"signed by another host's key", signed("a4", Report{"a3", "a2", at}), "bad signature"},
		{"unsigned", Report{"a3", "a2", at}.Encode(nil), "bad signature"},
		{"by a gateway, not a prober", signed("a2", Report{"a2", "a1", at}), "does not probe"},
		{"by a member of another site", signed("b1", Report{"b1", "a2", at}), "does not probe"},
		{"about a host that is no gateway", signed("a3", Report{"a3", "a4", at}), "not a gateway"},
		{"about a remote gateway", signed("a3", Report{"a3", "b1", at}), "not a gateway"},
		{"zero time", signed("a3", Report{"a3", "a2", 0}), "time"},
		{"junk", []byte("a3\na2"), "optional signature"},
		{"oversized", bytes.Repeat([]byte("x"), 600), "at most"},
	} {
		r, err := st.VerifyReport(local, tc.payload)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: refused: %v", tc.what, err)
		case tc.want == "" && r.At != at:
			t.Errorf("%s: decoded %+v", tc.what, r)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: got %v, want an error with %q", tc.what, err, tc.want)
		}
	}
}

// A gateway signs its site-pool and its WAN announcements from one
// counter (N, then N+1). Each pool's sequence grows on its own, so under a
// CA neither copy may make the other look replayed: pass after pass, the
// site's own gateway stays a peer and a usable gateway.
func TestGatewayCountersPerPool(t *testing.T) {
	ca := newCA(t)
	now := time.Now().Truncate(time.Second)
	pub, priv, _ := ed25519.GenerateKey(nil)
	cert, err := ca.Sign(identity.Cert{Name: "a2", Segments: []string{"blue"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		PublicKey: pub, Site: "a", Gateway: true})
	if err != nil {
		t.Fatal(err)
	}
	sign := func(ann Announcement, counter uint64) Member {
		ann.Cert, ann.Counter = cert.Marshal(), counter
		tags, err := ann.SignedTags("a2", func(p []byte) []byte { return identity.SignPayload(priv, p) })
		if err != nil {
			t.Fatal(err)
		}
		return Member{Name: "a2", Status: StatusAlive, Tags: tags}
	}
	base := Announcement{PublicKey: testKey(t, 2), Endpoint: netip.MustParseAddrPort("192.0.2.2:51820"), Site: "a", Role: Role{Gateway: true}}
	sitePool := base
	sitePool.Slices = []Slice{sl("blue", "10.42.2.0/24")}
	wan := base
	wan.Blocks = []Slice{sl("blue", "10.42.0.0/20")}

	b1 := newSigner(t, ca, "b1")
	b1.cert.Site, b1.cert.Gateway = "b", true
	b1cert, err := ca.Sign(*b1.cert)
	if err != nil {
		t.Fatal(err)
	}
	remoteAnn := Announcement{PublicKey: testKey(t, 9), Endpoint: netip.MustParseAddrPort("203.0.113.9:51820"), Site: "b",
		Role: Role{Gateway: true}, Blocks: []Slice{sl("blue", "10.42.16.0/20")}, Cert: b1cert.Marshal(), Counter: 1}
	b1tags, err := remoteAnn.SignedTags("b1", func(p []byte) []byte { return identity.SignPayload(b1.key, p) })
	if err != nil {
		t.Fatal(err)
	}

	local := Local{Name: "a1", PublicKey: testKey(t, 1), Link: "mesh0", TableBase: 100, RulePriority: 31000,
		Site: "a", Gateway: true, CA: ca.Public, Now: time.Now(),
		Segments: []LocalSegment{{Name: "blue", CIDR: pfx("10.42.0.0/16"), Subnet: pfx("10.42.1.0/24"), Block: pfx("10.42.0.0/20")}}}
	// The same two announcements, pass after pass, as serf keeps them.
	site, wanCopy := sign(sitePool, 10), sign(wan, 11)
	var prev *State
	for pass := range 3 {
		st := ComputeTopology(local, []Member{site}, []Member{wanCopy, {Name: "b1", Status: StatusAlive, Tags: b1tags}}, prev)
		if len(st.Rejected) != 0 {
			t.Fatalf("pass %d: rejected %+v", pass, st.Rejected)
		}
		if _, ok := st.PeerByName("a2"); !ok || !slices.Contains(st.Gateways, "a2") {
			t.Fatalf("pass %d: a2 peer %v, gateways %v", pass, ok, st.Gateways)
		}
		prev = &st
	}
}

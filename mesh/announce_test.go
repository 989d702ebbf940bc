package mesh

import (
	"net/netip"
	"strings"
	"testing"
)

func TestAnnouncementRoundTrip(t *testing.T) {
	in := Announcement{
		PublicKey: testKey(t, 7),
		Endpoint:  netip.MustParseAddrPort("[2001:db8::7]:51820"),
		Slices:    []Slice{sl("green", "10.43.7.0/24"), sl("blue", "10.42.7.0/24")},
	}
	tags, err := in.Tags()
	if err != nil {
		t.Fatal(err)
	}
	out, err := DecodeTags(tags)
	if err != nil {
		t.Fatal(err)
	}
	if out.PublicKey != in.PublicKey || out.Endpoint != in.Endpoint {
		t.Fatalf("decoded %+v, want %+v", out, in)
	}
	want := []Slice{sl("blue", "10.42.7.0/24"), sl("green", "10.43.7.0/24")} // sorted
	if len(out.Slices) != 2 || out.Slices[0] != want[0] || out.Slices[1] != want[1] {
		t.Fatalf("slices %v, want %v", out.Slices, want)
	}
}

func TestAnnouncementStaysWithinSerfTagLimit(t *testing.T) {
	var many []Slice
	for i := range 16 {
		many = append(many, Slice{Segment: "segment-name-15", Prefix: netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, byte(i)}), 64)})
	}
	_, err := Announcement{PublicKey: testKey(t, 1), Endpoint: netip.MustParseAddrPort("192.0.2.1:51820"), Slices: many}.Tags()
	if err == nil || !strings.Contains(err.Error(), "tag budget") {
		t.Fatalf("want a clear error for an oversized announcement, got %v", err)
	}
}

func TestDecodeRefusesTooManySlices(t *testing.T) {
	parts := make([]string, maxSlices+1)
	for i := range parts {
		parts[i] = "b=10.0.0.0/32"
	}
	tags := map[string]string{"v": "1", "k": testKey(t, 1).String(), "e": "192.0.2.1:1", "s": strings.Join(parts, ",")}
	if _, err := DecodeTags(tags); err == nil {
		t.Fatal("an announcement with too many slices was accepted")
	}
}

package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/internal/fileio"
	"github.com/meshd/meshd/mesh"
)

// claimsFile keeps claimed slices across restarts, so a host comes back
// with the slice its pods are addressed from.
const claimsFile = "claims.json"

type storedClaim struct {
	Prefix    netip.Prefix `json:"prefix"`
	ClaimedAt uint64       `json:"claimed_at"`
}

// claimer picks, keeps and re-stamps the slices of segments configured
// without a subnet. The loop owns it.
type claimer struct {
	self       string
	path       string
	hostPrefix map[string]int // per segment: the length of a claimed slice
	joinWait   bool           // seeds are configured: wait a moment for the join
	log        *slog.Logger
	// provisional names segments claimed while this host saw no other
	// member: their Lamport time says nothing about the cluster, so they
	// are re-stamped once the host has joined.
	provisional map[string]bool
}

func newClaimer(cfg *config.Config, log *slog.Logger) *claimer {
	c := &claimer{self: cfg.NodeName, path: filepath.Join(cfg.DataDir, claimsFile), hostPrefix: map[string]int{}, joinWait: len(cfg.Cluster.Join) > 0, log: log}
	for _, s := range cfg.Segments {
		c.hostPrefix[s.Name] = s.HostPrefix
	}
	return c
}

// load restores earlier claims for segments without a configured subnet,
// ignoring (and claiming anew) any that no longer fit: the slice length,
// the segment, this site's block, or a prefix that is not canonical,
// which every other host would refuse. An unreadable file is kept aside,
// not overwritten: it may be the only record of which slice this host's
// pods are addressed from.
func (c *claimer) load(ann *announcer) error {
	raw, err := fileio.ReadRegular(c.path, fileio.MaxStateSize)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read claimed slices: %w", err)
	}
	var stored map[string]storedClaim
	if err := json.Unmarshal(raw, &stored); err != nil {
		aside := c.path + ".corrupt-" + time.Now().UTC().Format("20060102T150405Z")
		if rerr := os.Rename(c.path, aside); rerr != nil {
			return fmt.Errorf("claims file %s is unreadable (%v) and could not be moved aside: %w", c.path, err, rerr)
		}
		c.log.Warn("claims file is unreadable; kept it aside and will claim slices anew", "path", c.path, "kept", aside, "err", err)
		return nil
	}
	segs := ann.segments()
	for i, seg := range segs {
		sc, ok := stored[seg.Name]
		if seg.Subnet.IsValid() || !ok || sc.ClaimedAt == 0 {
			continue
		}
		if why := unfit(sc.Prefix, seg, c.hostPrefix[seg.Name]); why != "" {
			c.log.Warn("saved claim no longer fits; claiming another slice", "segment", seg.Name, "slice", sc.Prefix, "why", why, "path", c.path)
			continue
		}
		segs[i].Subnet, segs[i].ClaimedAt = sc.Prefix, sc.ClaimedAt
		c.log.Info("restored claimed slice", "segment", seg.Name, "slice", sc.Prefix, "claimed_at", sc.ClaimedAt)
	}
	ann.setSegments(segs)
	return nil
}

// unfit says why a saved slice cannot be announced for seg ("" when it
// can): the other hosts of the site check the same.
func unfit(p netip.Prefix, seg mesh.LocalSegment, bits int) string {
	switch {
	case !p.IsValid():
		return "not a prefix"
	case p != p.Masked():
		return fmt.Sprintf("not canonical (%s has host bits set)", p)
	case p.Bits() != bits:
		return fmt.Sprintf("/%d, but host_prefix is /%d", p.Bits(), bits)
	case !seg.CIDR.Contains(p.Addr()):
		return fmt.Sprintf("outside the segment's cidr %s", seg.CIDR)
	case seg.Block.IsValid() && !seg.Block.Contains(p.Addr()):
		return fmt.Sprintf("outside this site's block %s", seg.Block)
	}
	return ""
}

// pool is where seg's slices come from: this site's block when the
// cluster has several sites, the whole segment otherwise.
func pool(seg mesh.LocalSegment) netip.Prefix {
	if seg.Block.IsValid() {
		return seg.Block
	}
	return seg.CIDR
}

func (c *claimer) save(segs []mesh.LocalSegment) error {
	stored := map[string]storedClaim{}
	for _, seg := range segs {
		if seg.ClaimedAt != 0 {
			stored[seg.Name] = storedClaim{seg.Subnet, seg.ClaimedAt}
		}
	}
	raw, err := json.MarshalIndent(stored, "", "  ")
	if err != nil {
		return err
	}
	if err := fileio.WriteAtomic(c.path, raw, 0o600, fileio.Overwrite); err != nil {
		return fmt.Errorf("save claimed slices: %w", err)
	}
	return nil
}

// claimMissing claims a slice for every segment that has none yet. It
// first gives the join a moment, so the choice can avoid the slices the
// cluster already holds; a clash that still happens is settled by
// Compute (earlier claim wins) and claim.
func (c *claimer) claimMissing(ctx context.Context, ann *announcer, cl Cluster) error {
	var missing []string
	for _, seg := range ann.segments() {
		if !seg.Subnet.IsValid() {
			missing = append(missing, seg.Name)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if c.joinWait {
		deadline := time.Now().Add(3 * time.Second)
		for time.Now().Before(deadline) && ctx.Err() == nil && !joined(ann.local().Name, cl.Members()) {
			time.Sleep(100 * time.Millisecond)
		}
	}
	members := cl.Members()
	local := ann.local()
	local.Now = time.Now()
	st := mesh.Compute(local, members, nil)
	alone := !joined(local.Name, members)
	if err := c.claim(ann, missing, &st); err != nil {
		return err
	}
	if alone {
		c.provisional = map[string]bool{}
		for _, name := range missing {
			c.provisional[name] = true
		}
	}
	return nil
}

func joined(self string, members []mesh.Member) bool {
	for _, m := range members {
		if m.Name != self && m.Status == mesh.StatusAlive {
			return true
		}
	}
	return false
}

// restampDue reports whether provisional claims can now be stamped with
// the cluster's Lamport time: a host that claimed while cut off must not
// evict a long-standing owner with its tiny pre-join clock.
func (c *claimer) restampDue(members []mesh.Member) bool {
	return len(c.provisional) > 0 && joined(c.self, members)
}

// restamp gives claims made before joining the cluster's current Lamport
// time, so they yield to any slice the cluster already held. Segments
// about to be claimed anew (lost) are left to claim.
func (c *claimer) restamp(ann *announcer, lost []string) error {
	segs := ann.segments()
	for i, seg := range segs {
		if c.provisional[seg.Name] && !slices.Contains(lost, seg.Name) && seg.Subnet.IsValid() {
			segs[i].ClaimedAt = ann.site.LamportTime() + 1
			c.log.Info("re-stamped a claim made before joining", "segment", seg.Name, "slice", seg.Subnet, "claimed_at", segs[i].ClaimedAt)
		}
	}
	c.provisional = nil
	ann.setSegments(segs)
	return errors.Join(c.save(segs), ann.publish())
}

// claim picks a slice for each named segment, clear of every slice the
// accepted peers hold (including the one just lost), records it and
// announces it.
func (c *claimer) claim(ann *announcer, segments []string, st *mesh.State) error {
	segs := ann.segments()
	var errs []error
	for i, seg := range segs {
		if !slices.Contains(segments, seg.Name) {
			continue
		}
		taken := st.Slices(seg.Name)
		p, err := mesh.ChooseSlice(pool(seg), c.hostPrefix[seg.Name], ann.local().Name, taken)
		if err != nil {
			segs[i].Subnet, segs[i].ClaimedAt = netip.Prefix{}, 0
			errs = append(errs, fmt.Errorf("claim a slice of segment %s: %w", seg.Name, err))
			continue
		}
		old := seg.Subnet
		segs[i].Subnet, segs[i].ClaimedAt = p, ann.site.LamportTime()+1
		if old.IsValid() {
			c.log.Warn("slice lost to an earlier claim; claimed another", "segment", seg.Name, "lost", old, "slice", p)
		} else {
			c.log.Info("claimed slice", "segment", seg.Name, "slice", p, "claimed_at", segs[i].ClaimedAt)
		}
	}
	ann.setSegments(segs)
	return errors.Join(append(errs, c.save(segs), ann.publish())...)
}

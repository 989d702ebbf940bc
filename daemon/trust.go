package daemon

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshd/meshd/crypto"
	"github.com/meshd/meshd/identity"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/wgdev"
)

// claimsFile keeps claimed slices across restarts, so a host comes back
// with the slice its pods are addressed from.
const claimsFile = "claims.json"

type storedClaim struct {
	Prefix    netip.Prefix `json:"prefix"`
	ClaimedAt uint64       `json:"claimed_at"`
}

func (d *Daemon) claimsPath() string { return filepath.Join(d.cfg.DataDir, claimsFile) }

// loadClaims restores earlier claims for segments without a configured
// subnet, ignoring any that no longer fit the segment.
func (d *Daemon) loadClaims() error {
	raw, err := os.ReadFile(d.claimsPath())
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read claimed slices: %w", err)
	}
	var stored map[string]storedClaim
	if err := json.Unmarshal(raw, &stored); err != nil {
		d.log.Warn("ignoring unreadable claims file; slices will be claimed anew", "path", d.claimsPath(), "err", err)
		return nil
	}
	segs := slices.Clone(d.local.Segments)
	for i, seg := range segs {
		c, ok := stored[seg.Name]
		if seg.Subnet.IsValid() || !ok || c.ClaimedAt == 0 {
			continue
		}
		if c.Prefix.Bits() != d.cfg.Segments[i].HostPrefix || !seg.CIDR.Contains(c.Prefix.Addr()) {
			continue
		}
		segs[i].Subnet, segs[i].ClaimedAt = c.Prefix, c.ClaimedAt
		d.log.Info("restored claimed slice", "segment", seg.Name, "slice", c.Prefix, "claimed_at", c.ClaimedAt)
	}
	d.local.Segments = segs
	return nil
}

func (d *Daemon) saveClaims() error {
	stored := map[string]storedClaim{}
	for _, seg := range d.local.Segments {
		if seg.ClaimedAt != 0 {
			stored[seg.Name] = storedClaim{seg.Subnet, seg.ClaimedAt}
		}
	}
	raw, err := json.MarshalIndent(stored, "", "  ")
	if err != nil {
		return err
	}
	tmp := d.claimsPath() + ".tmp"
	if err := os.WriteFile(tmp, raw, 0o600); err != nil {
		return fmt.Errorf("save claimed slices: %w", err)
	}
	return os.Rename(tmp, d.claimsPath())
}

// claimMissing claims a slice for every segment that has none yet. It
// first gives the join a moment, so the choice can avoid the slices the
// cluster already holds; a clash that still happens is settled by
// Compute (earlier claim wins) and reclaim.
func (d *Daemon) claimMissing(ctx context.Context) error {
	var missing []string
	for _, seg := range d.local.Segments {
		if !seg.Subnet.IsValid() {
			missing = append(missing, seg.Name)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if len(d.cfg.Cluster.Join) > 0 {
		deadline := time.Now().Add(3 * time.Second)
		for time.Now().Before(deadline) && ctx.Err() == nil && !d.joined(d.members.Members()) {
			time.Sleep(100 * time.Millisecond)
		}
	}
	members := d.members.Members()
	local := d.localCopy()
	local.Now = time.Now()
	st := mesh.Compute(local, members, nil)
	alone := !d.joined(members)
	if err := d.claim(missing, &st); err != nil {
		return err
	}
	if alone {
		d.provisional = map[string]bool{}
		for _, name := range missing {
			d.provisional[name] = true
		}
	}
	return nil
}

func (d *Daemon) joined(members []mesh.Member) bool {
	for _, m := range members {
		if m.Name != d.local.Name && m.Status == mesh.StatusAlive {
			return true
		}
	}
	return false
}

// restampDue reports whether provisional claims can now be stamped with
// the cluster's Lamport time: a host that claimed while cut off must not
// evict a long-standing owner with its tiny pre-join clock.
func (d *Daemon) restampDue(members []mesh.Member) bool {
	return len(d.provisional) > 0 && d.joined(members)
}

// restamp gives claims made before joining the cluster's current Lamport
// time, so they yield to any slice the cluster already held. Segments
// about to be claimed anew (lost) are left to claim.
func (d *Daemon) restamp(lost []string) error {
	segs := slices.Clone(d.local.Segments)
	for i, seg := range segs {
		if d.provisional[seg.Name] && !slices.Contains(lost, seg.Name) && seg.Subnet.IsValid() {
			segs[i].ClaimedAt = d.members.LamportTime() + 1
			d.log.Info("re-stamped a claim made before joining", "segment", seg.Name, "slice", seg.Subnet, "claimed_at", segs[i].ClaimedAt)
		}
	}
	d.provisional = nil
	d.mu.Lock()
	d.local.Segments = segs
	d.mu.Unlock()
	return errors.Join(d.saveClaims(), d.publish())
}

// claim picks a slice for each named segment, clear of every slice the
// accepted peers hold (including the one just lost), records it and
// announces it.
func (d *Daemon) claim(segments []string, st *mesh.State) error {
	segs := slices.Clone(d.local.Segments)
	var errs []error
	for i, seg := range segs {
		if !slices.Contains(segments, seg.Name) {
			continue
		}
		taken := st.Slices(seg.Name)
		p, err := mesh.ChooseSlice(seg.CIDR, d.cfg.Segments[i].HostPrefix, d.local.Name, taken)
		if err != nil {
			segs[i].Subnet, segs[i].ClaimedAt = netip.Prefix{}, 0
			errs = append(errs, fmt.Errorf("claim a slice of segment %s: %w", seg.Name, err))
			continue
		}
		old := seg.Subnet
		segs[i].Subnet, segs[i].ClaimedAt = p, d.members.LamportTime()+1
		if old.IsValid() {
			d.log.Warn("slice lost to an earlier claim; claimed another", "segment", seg.Name, "lost", old, "slice", p)
		} else {
			d.log.Info("claimed slice", "segment", seg.Name, "slice", p, "claimed_at", segs[i].ClaimedAt)
		}
	}
	d.mu.Lock()
	d.local.Segments = segs
	d.mu.Unlock()
	return errors.Join(append(errs, d.saveClaims(), d.publish())...)
}

// localCopy returns this host's current description; the reconciler and
// request handlers replace d.local's slices rather than mutating them, so
// a copy is safe to read without the lock.
func (d *Daemon) localCopy() mesh.Local {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.local
}

// tags builds this host's announcement, signed when the cluster has a CA.
// The counter is the wall clock in milliseconds, forced to increase, so it
// keeps growing across restarts without any saved state.
func (d *Daemon) tags() (map[string]string, error) {
	local := d.localCopy()
	ann := mesh.Announcement{PublicKey: local.PublicKey, Endpoint: d.endpointAddr}
	for _, seg := range local.Segments {
		if seg.Subnet.IsValid() {
			ann.Slices = append(ann.Slices, mesh.Slice{Segment: seg.Name, Prefix: seg.Subnet, ClaimedAt: seg.ClaimedAt})
		}
	}
	id := d.cfg.Identity
	if !id.Enabled() {
		return ann.Tags()
	}
	d.counter = max(d.counter+1, uint64(time.Now().UnixMilli()))
	ann.Cert, ann.Counter = id.Cert.Marshal(), d.counter
	return ann.SignedTags(local.Name, func(payload []byte) []byte { return identity.SignPayload(id.Key, payload) })
}

// publish re-announces this host after its slices or key changed.
func (d *Daemon) publish() error {
	tags, err := d.tags()
	if err != nil {
		return err
	}
	if err := d.members.SetTags(tags); err != nil {
		d.announceDirty = true
		return fmt.Errorf("announce: %w", err)
	}
	d.announceDirty = false
	d.Kick()
	return nil
}

// rotateKey replaces the WireGuard key: saved first (a crash must not
// lose it), then the device, then the announcement, after which peers
// swap the old key for the new one. Sessions re-handshake; TCP streams
// ride it out on their retransmissions.
func (d *Daemon) rotateKey() (wgtypes.Key, error) {
	key, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return wgtypes.Key{}, err
	}
	if err := crypto.WritePrivateKey(filepath.Join(d.cfg.DataDir, crypto.KeyFileName), key); err != nil {
		return wgtypes.Key{}, err
	}
	if err := wgdev.Configure(d.wg, d.dev.Name(), key, d.cfg.WireGuard.ListenPort); err != nil {
		return wgtypes.Key{}, err
	}
	d.mu.Lock()
	old := d.key
	d.key, d.local.PublicKey = key, key.PublicKey()
	d.mu.Unlock()
	d.log.Info("rotated WireGuard key", "old", crypto.Fingerprint(old.PublicKey()), "new", crypto.Fingerprint(key.PublicKey()))
	return key.PublicKey(), d.publish()
}

func (d *Daemon) registerTrustEndpoints() {
	d.ctrl.Handle("POST /v1/rotate-key", func(w http.ResponseWriter, r *http.Request) {
		var pub wgtypes.Key
		err := d.onReconciler(r, func() (err error) {
			pub, err = d.rotateKey()
			return err
		})
		if err != nil {
			writeError(w, err)
			return
		}
		json.NewEncoder(w).Encode(map[string]string{"public_key": pub.String(), "fingerprint": crypto.Fingerprint(pub)})
	})
	d.ctrl.Handle("POST /v1/gossip-key/{op}", d.serveGossipKey)
}

// serveGossipKey runs a serf keyring operation across the whole cluster.
// It runs on the request's goroutine: serf's key manager is safe for
// concurrent use and waits for every member's answer, which must not
// stall the reconciler.
func (d *Daemon) serveGossipKey(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 256))
	key := string(body)
	km := d.membership.Serf().KeyManager()
	var resp any
	var err error
	switch op := r.PathValue("op"); op {
	case "list":
		resp, err = km.ListKeys()
	case "install", "use", "remove":
		if raw, derr := base64.StdEncoding.DecodeString(key); derr != nil || (len(raw) != 16 && len(raw) != 24 && len(raw) != 32) {
			writeError(w, fmt.Errorf("%w: the key must be base64 of 16, 24 or 32 bytes (meshd keygen gossip makes one)", errBadRequest))
			return
		}
		switch op {
		case "install":
			resp, err = km.InstallKey(key)
		case "use":
			resp, err = km.UseKey(key)
		default:
			resp, err = km.RemoveKey(key)
		}
	default:
		writeError(w, fmt.Errorf("%w: unknown keyring operation %q", errBadRequest, op))
		return
	}
	if err != nil {
		d.log.Warn("gossip keyring operation incomplete", "op", r.PathValue("op"), "err", err)
	} else {
		d.log.Info("gossip keyring operation done", "op", r.PathValue("op"))
	}
	out := map[string]any{"response": resp}
	if err != nil {
		out["error"] = err.Error()
	}
	json.NewEncoder(w).Encode(out)
}

package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/identity"
	"github.com/meshd/meshd/segment"
)

const defaultCADir = "/etc/meshd/ca"

func newCACommand() *cobra.Command {
	ca := &cobra.Command{
		Use:   "ca",
		Short: "Manage the cluster CA that certifies which host may hold which segments",
		Long: `The cluster CA signs one certificate per host naming the segments (and
optionally the exact subnets) the host may hold. Hosts sign their gossip
announcement with the certificate's key, so knowing the gossip key is no
longer enough to claim a slice of a segment.

Keep ca.key on the machine that provisions hosts, not on the hosts; every
host needs only ca.crt plus its own host.key and host.crt.`,
	}
	ca.AddCommand(newCAInitCommand(), newCASignCommand())
	return ca
}

func newCAInitCommand() *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create a new cluster CA (ca.key and ca.crt)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return usageError{errors.New("--out must name a directory")}
			}
			if _, err := identity.InitCA(out); err != nil {
				if errors.Is(err, fs.ErrExist) {
					return usageError{fmt.Errorf("--out %s already holds a CA (%v); refusing to overwrite it: a new CA invalidates every host certificate", out, err)}
				}
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "created CA in %s: keep %s secret, copy %s to every host\n",
				out, identity.CAKeyFile, identity.CACertFile)
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", defaultCADir, "directory for ca.key and ca.crt (created 0700)")
	return cmd
}

// signFlags are the raw flag values of 'ca sign'; parse turns them into a
// certificate template or a usage error naming the flag.
type signFlags struct {
	caDir, name, segments, subnets, notBefore, notAfter, out string
	site                                                     string
	validFor                                                 time.Duration
	force, gateway                                           bool
}

func newCASignCommand() *cobra.Command {
	var f signFlags
	cmd := &cobra.Command{
		Use:   "sign",
		Short: "Create a host key and certificate signed by the CA",
		Long: `Sign generates a fresh ed25519 key for a host and a certificate, signed by
the CA in --ca, that lets the host hold slices of --segments. With
--subnets the certificate pins each segment to exact subnets, and the host
may only announce slices inside them: pinning is all or nothing, every
segment of --segments gets its --subnets entry, or none does. On a cluster
of several sites, --site binds the host to its site (it is refused in any
other) and --gateway lets it act as that site's gateway; a gateway's pins,
if any, must cover its site's blocks.

Example:
  meshd ca sign --ca /etc/meshd/ca --name h1 --segments blue,green \
      --subnets blue=10.42.1.0/24,green=10.43.1.0/24 --out /etc/meshd/h1`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			tmpl, err := f.parse(time.Now())
			if err != nil {
				return usageError{err}
			}
			return signHost(cmd, f, tmpl)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.caDir, "ca", defaultCADir, "CA directory written by 'meshd ca init'")
	fl.StringVar(&f.name, "name", "", "host name the certificate is issued to (required)")
	fl.StringVar(&f.segments, "segments", "", "comma-separated segments the host may hold, e.g. blue,green (required)")
	fl.StringVar(&f.subnets, "subnets", "", "pin segments to exact subnets, e.g. blue=10.42.1.0/24,green=10.43.1.0/24 (every segment of --segments, or none)")
	fl.StringVar(&f.site, "site", "", "site the host belongs to ([site] name; default: the default site)")
	fl.BoolVar(&f.gateway, "gateway", false, "let the host act as its site's gateway")
	fl.DurationVar(&f.validFor, "valid-for", 8760*time.Hour, "validity period from --not-before")
	fl.StringVar(&f.notBefore, "not-before", "", "start of validity, RFC 3339 (default: now)")
	fl.StringVar(&f.notAfter, "not-after", "", "end of validity, RFC 3339 (overrides --valid-for)")
	fl.StringVar(&f.out, "out", "", "directory for host.key and host.crt, created 0700 (required)")
	fl.BoolVar(&f.force, "force", false, "replace an existing host.key and host.crt in --out")
	return cmd
}

func (f signFlags) parse(now time.Time) (identity.Cert, error) {
	var c identity.Cert
	if f.name == "" {
		return c, errors.New("--name is required")
	}
	if err := identity.ValidName(f.name); err != nil {
		return c, fmt.Errorf("--name: %w", err)
	}
	if f.out == "" {
		return c, errors.New("--out is required: the directory to write host.key and host.crt to")
	}
	segs, err := parseSegments(f.segments)
	if err != nil {
		return c, err
	}
	pins, err := parseSubnets(f.subnets, segs)
	if err != nil {
		return c, err
	}
	nb, na, err := f.validity(now)
	if err != nil {
		return c, err
	}
	if f.site != "" {
		if err := segment.CheckName(f.site); err != nil {
			return c, fmt.Errorf("--site: %w", err)
		}
	}
	site := f.site
	if site == "default" {
		site = "" // the default site is no site in the encoding
	}
	return identity.Cert{Name: f.name, Segments: segs, Subnets: pins, NotBefore: nb, NotAfter: na, Site: site, Gateway: f.gateway}, nil
}

func parseSegments(s string) ([]string, error) {
	if s == "" {
		return nil, errors.New("--segments is required, e.g. --segments blue,green")
	}
	segs := strings.Split(s, ",")
	if len(segs) > identity.MaxSegments {
		return nil, fmt.Errorf("--segments lists %d segments, at most %d allowed", len(segs), identity.MaxSegments)
	}
	for i, name := range segs {
		if err := identity.ValidSegment(name); err != nil {
			return nil, fmt.Errorf("--segments: %w", err)
		}
		if slices.Contains(segs[:i], name) {
			return nil, fmt.Errorf("--segments lists %q twice", name)
		}
	}
	return segs, nil
}

// parseSubnets insists that pins cover every listed segment: once a
// certificate pins anything, an unpinned segment could never be used.
func parseSubnets(s string, segs []string) ([]identity.Slice, error) {
	if s == "" {
		return nil, nil
	}
	parts := strings.Split(s, ",")
	if len(parts) > identity.MaxSubnets {
		return nil, fmt.Errorf("--subnets lists %d subnets, at most %d allowed", len(parts), identity.MaxSubnets)
	}
	var pins []identity.Slice
	for _, p := range parts {
		sl, err := identity.ParseSlice(p)
		if err != nil {
			return nil, fmt.Errorf("--subnets: %w", err)
		}
		if !slices.Contains(segs, sl.Segment) {
			return nil, fmt.Errorf("--subnets pins segment %q, which --segments does not list", sl.Segment)
		}
		if slices.Contains(pins, sl) {
			return nil, fmt.Errorf("--subnets lists %s twice", sl)
		}
		pins = append(pins, sl)
	}
	for _, seg := range segs {
		if !slices.ContainsFunc(pins, func(p identity.Slice) bool { return p.Segment == seg }) {
			return nil, fmt.Errorf("--subnets pins no subnet for segment %q: pin every segment in --segments, or none", seg)
		}
	}
	return pins, nil
}

func (f signFlags) validity(now time.Time) (nb, na time.Time, err error) {
	nb = now
	if f.notBefore != "" {
		if nb, err = time.Parse(time.RFC3339, f.notBefore); err != nil {
			return nb, na, fmt.Errorf("--not-before %q is not an RFC 3339 time like 2026-01-02T15:04:05Z", f.notBefore)
		}
	}
	if f.notAfter == "" {
		if f.validFor <= 0 {
			return nb, na, fmt.Errorf("--valid-for must be positive, got %s", f.validFor)
		}
		return nb, nb.Add(f.validFor), nil
	}
	if na, err = time.Parse(time.RFC3339, f.notAfter); err != nil {
		return nb, na, fmt.Errorf("--not-after %q is not an RFC 3339 time like 2026-01-02T15:04:05Z", f.notAfter)
	}
	if !na.Truncate(time.Second).After(nb.Truncate(time.Second)) {
		return nb, na, fmt.Errorf("--not-after %s is not after the start of validity %s", f.notAfter, nb.UTC().Format(time.RFC3339))
	}
	return nb, na, nil
}

func signHost(cmd *cobra.Command, f signFlags, tmpl identity.Cert) error {
	ca, err := identity.LoadCA(f.caDir)
	if err != nil {
		return caLoadError(f.caDir, err)
	}
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return fmt.Errorf("generate host key: %w", err)
	}
	tmpl.PublicKey = pub
	cert, err := ca.Sign(tmpl)
	if err != nil {
		return usageError{fmt.Errorf("cannot sign: %w", err)}
	}
	if err := identity.WriteHost(f.out, cert, key, f.force); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return usageError{fmt.Errorf("--out %s already holds a host identity (%v); pass --force to replace it", f.out, err)}
		}
		return err
	}
	w := cmd.OutOrStdout()
	role := ""
	if cert.Gateway {
		role = " as a gateway"
	}
	fmt.Fprintf(w, "signed %s for segments %s in site %s%s, valid %s to %s\n", cert.Name, strings.Join(cert.Segments, ","),
		cert.SiteName(), role, cert.NotBefore.Format(time.RFC3339), cert.NotAfter.Format(time.RFC3339))
	fmt.Fprintf(w, "wrote %s and %s; install them on %s together with %s\n",
		filepath.Join(f.out, identity.HostKeyFile), filepath.Join(f.out, identity.HostCertFile),
		cert.Name, filepath.Join(f.caDir, identity.CACertFile))
	return nil
}

// caLoadError makes a missing or broken CA a usage error naming --ca; key
// permission problems already map to exit 2 as crypto.KeyError.
func caLoadError(dir string, err error) error {
	var fe *identity.FileError
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return usageError{fmt.Errorf("--ca %s: no CA there (%v); create one with 'meshd ca init --out %s'", dir, err, dir)}
	case errors.As(err, &fe):
		return usageError{fmt.Errorf("--ca: %w", err)}
	}
	return err
}

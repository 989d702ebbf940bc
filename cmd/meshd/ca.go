package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/identity"
	"github.com/meshd/meshd/segment"
)

// defaultCADir is relative: the CA lives on the machine that provisions
// hosts, in the directory the operator works in, never on a meshd host,
// where a stolen ca.key would let a thief certify any name and slice.
const defaultCADir = "meshd-ca"

// oldCADir is where 'meshd ca init' used to put a CA by default.
const oldCADir = "/etc/meshd/ca"

func newCACommand() *cobra.Command {
	ca := &cobra.Command{
		Use:   "ca",
		Short: "Manage the cluster CA that certifies which host may hold which segments",
		Long: `The cluster CA signs one certificate per host naming the segments (and
optionally the exact subnets) the host may hold. Hosts sign their gossip
announcement with the certificate's key, so knowing the gossip key is no
longer enough to claim a slice of a segment.

Keep ca.key on the machine that provisions hosts, not on the hosts; every
host needs only ca.crt plus its own host.key and host.crt. The CA
directory defaults to ./meshd-ca, in the directory you run meshd ca from,
for that reason.`,
	}
	ca.AddCommand(newCAInitCommand(), newCASignCommand(), newCAShowCommand())
	return ca
}

func newCAInitCommand() *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create a new cluster CA (ca.key and ca.crt)",
		Long: `Init creates a new cluster CA in --out: ca.key (mode 0600), which signs
every host's certificate, and ca.crt, which every host needs.

--out defaults to ./meshd-ca, in the current directory, not to a path on a
meshd host: run this on the machine that provisions hosts and keep ca.key
there, offline if you can. Whoever holds ca.key can certify any host name
for any segment and slice; a meshd host never needs it.`,
		Args: noArgs,
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
	cmd.Flags().StringVar(&out, "out", defaultCADir, "directory for ca.key and ca.crt (created 0700), on the provisioning machine, not a meshd host")
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
	fl.StringVar(&f.caDir, "ca", defaultCADir, "CA directory written by 'meshd ca init --out'")
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
		if _, serr := os.Stat(filepath.Join(oldCADir, identity.CAKeyFile)); serr == nil && dir == defaultCADir {
			return usageError{fmt.Errorf("--ca %s: no CA there; the CA in %s (where 'meshd ca init' used to put it) can be used with --ca %s, and moved off this host", dir, oldCADir, oldCADir)}
		}
		return usageError{fmt.Errorf("--ca %s: no CA there (%v); create one with 'meshd ca init --out %s'", dir, err, dir)}
	case errors.As(err, &fe):
		return usageError{fmt.Errorf("--ca: %w", err)}
	}
	return err
}

func newCAShowCommand() *cobra.Command {
	var caPath string
	cmd := &cobra.Command{
		Use:   "show FILE",
		Short: "Print a host certificate: name, site, role, segments, subnets, validity, fingerprints",
		Long: `Show prints what a host certificate (host.crt) grants: the host name, its
site and whether it may be a gateway, the segments and pinned subnets it
may hold, its validity and the days left, and the fingerprints of its key
and of the CA that signed it.

The signature is checked against --ca (a CA directory or its ca.crt), or
against ca.crt beside FILE when there is one. Exit codes: 0 shown (also
for an expired certificate, or one that no CA given verifies: the output
says so), 2 FILE or --ca is not a readable certificate.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageError{fmt.Errorf("meshd ca show takes one FILE (a host.crt), got %q; see 'meshd ca show --help'", args)}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			cert, err := identity.LoadCert(args[0])
			if err != nil {
				return usageError{err}
			}
			ca, caFile, err := showCA(caPath, args[0])
			if err != nil {
				return err
			}
			printCert(cmd.OutOrStdout(), cert, ca, caFile, time.Now())
			return nil
		},
	}
	cmd.Flags().StringVar(&caPath, "ca", "", "CA directory or ca.crt to check the signature against (default: ca.crt beside FILE, if any)")
	return cmd
}

// showCA finds the CA to check against: --ca (a directory or a file), or
// ca.crt beside the certificate; none is not an error.
func showCA(flag, certFile string) (ed25519.PublicKey, string, error) {
	path := flag
	if path == "" {
		path = filepath.Join(filepath.Dir(certFile), identity.CACertFile)
		if _, err := os.Stat(path); err != nil {
			return nil, "", nil
		}
	} else if info, err := os.Stat(path); err == nil && info.IsDir() {
		path = filepath.Join(path, identity.CACertFile)
	}
	ca, err := identity.LoadCAPublic(path)
	if err != nil {
		return nil, "", usageError{fmt.Errorf("--ca: %w", err)}
	}
	return ca, path, nil
}

func printCert(w io.Writer, c *identity.Cert, ca ed25519.PublicKey, caFile string, now time.Time) {
	yesNo := map[bool]string{true: "yes", false: "no"}
	subnets := "none pinned: any slice of its segments"
	if len(c.Subnets) > 0 {
		pins := make([]string, len(c.Subnets))
		for i, p := range c.Subnets {
			pins[i] = p.String()
		}
		subnets = strings.Join(pins, ", ")
	}
	var left string
	switch {
	case now.Before(c.NotBefore):
		left = fmt.Sprintf("not valid yet: starts in %s", days(c.NotBefore.Sub(now)))
	case now.After(c.NotAfter):
		left = fmt.Sprintf("EXPIRED %s ago", days(now.Sub(c.NotAfter)))
	default:
		left = days(c.NotAfter.Sub(now)) + " left"
	}
	signer := "not checked (no CA given: pass --ca DIR, or keep ca.crt beside the certificate)"
	if ca != nil {
		signer = identity.Fingerprint(ca) + " (" + caFile + "): "
		if err := c.Verify(ca, c.NotBefore); err != nil {
			signer += "NOT signed by this CA"
		} else {
			signer += "signature verified"
		}
	}
	fmt.Fprintf(w, "name       %s\n", c.Name)
	fmt.Fprintf(w, "site       %s\n", c.SiteName())
	fmt.Fprintf(w, "gateway    %s\n", yesNo[c.Gateway])
	fmt.Fprintf(w, "segments   %s\n", strings.Join(c.Segments, ", "))
	fmt.Fprintf(w, "subnets    %s\n", subnets)
	fmt.Fprintf(w, "valid      %s to %s (%s)\n", c.NotBefore.UTC().Format(time.RFC3339), c.NotAfter.UTC().Format(time.RFC3339), left)
	fmt.Fprintf(w, "key        %s\n", identity.Fingerprint(c.PublicKey))
	fmt.Fprintf(w, "CA         %s\n", signer)
}

// days renders a validity left as whole days, or hours and minutes
// under one.
func days(d time.Duration) string {
	if d < 24*time.Hour {
		return d.Round(time.Minute).String()
	}
	return fmt.Sprintf("%d days", int(d.Round(24*time.Hour)/(24*time.Hour)))
}

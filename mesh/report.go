package mesh

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/meshd/meshd/identity"
)

// ReportEvent is the site-pool user event that carries a Report. Reports
// are events, not announcement tags: they are short-lived, and a signed
// announcement leaves no room under serf's tag limit.
const ReportEvent = "meshd-report"

// Report says that Gateway, a gateway of the reporter's site, answered
// the reporter's probes itself but forwarded none of them to the far end
// of its WAN tunnels, as of the reporter's unix time At. Under a CA the
// reporter signs it with its host key.
type Report struct {
	Reporter, Gateway string
	At                uint64
}

// maxReportBytes bounds what a member can make every host of its site
// parse.
const maxReportBytes = 512

func (r Report) body() []byte {
	return []byte(r.Reporter + "\n" + r.Gateway + "\n" + strconv.FormatUint(r.At, 10))
}

// Encode returns the event payload, signed when sign is not nil.
func (r Report) Encode(sign func([]byte) []byte) []byte {
	b := r.body()
	if sign != nil {
		b = append(b, '\n')
		b = append(b, base64.RawStdEncoding.EncodeToString(sign(SignedReport(r.body())))...)
	}
	return b
}

// SignedReport is what a reporter signs: a prefix keeps a report's
// signature from ever passing for an announcement's, and the reverse.
func SignedReport(body []byte) []byte { return append([]byte("meshd report\n"), body...) }

func decodeReport(b []byte) (Report, []byte, error) {
	if len(b) > maxReportBytes {
		return Report{}, nil, fmt.Errorf("report of %d bytes, at most %d", len(b), maxReportBytes)
	}
	parts := bytes.Split(b, []byte("\n"))
	if len(parts) != 3 && len(parts) != 4 {
		return Report{}, nil, errors.New("report is not reporter, gateway, time and an optional signature")
	}
	r := Report{Reporter: string(parts[0]), Gateway: string(parts[1])}
	for _, n := range []string{r.Reporter, r.Gateway} {
		if err := identity.ValidName(n); err != nil {
			return Report{}, nil, fmt.Errorf("report: %w", err)
		}
	}
	var err error
	if r.At, err = strconv.ParseUint(string(parts[2]), 10, 64); err != nil || r.At == 0 {
		return Report{}, nil, fmt.Errorf("report time %q is not a positive number", parts[2])
	}
	var sig []byte
	if len(parts) == 4 {
		if sig, err = decodeB64(string(parts[3]), 128); err != nil {
			return Report{}, nil, fmt.Errorf("report signature: %w", err)
		}
	}
	return r, sig, nil
}

// VerifyReport accepts a report event only from one of this site's
// probers, about one of its gateways, and under a CA only with a valid
// signature of the reporter's certified key: any other member could
// otherwise drain the site's gateways at will. The reporter's certificate
// was checked when its announcement was accepted.
func (s *State) VerifyReport(local Local, payload []byte) (Report, error) {
	r, sig, err := decodeReport(payload)
	if err != nil {
		return Report{}, err
	}
	if !slices.Contains(s.Probers, r.Reporter) {
		return Report{}, fmt.Errorf("report by %s, which does not probe this site's gateways", r.Reporter)
	}
	if !s.isSiteGateway(local, r.Gateway) {
		return Report{}, fmt.Errorf("report by %s names %s, not a gateway of this site", r.Reporter, r.Gateway)
	}
	if local.CA == nil || r.Reporter == local.Name {
		return r, nil
	}
	d := s.decoded[r.Reporter]
	if d == nil || d.err != nil {
		return Report{}, fmt.Errorf("report by %s, whose announcement was not accepted", r.Reporter)
	}
	if unsigned(&d.ann) {
		if local.AcceptUnsigned {
			return r, nil // transitional: its announcements are unsigned too
		}
		return Report{}, fmt.Errorf("report by %s, which has no certificate", r.Reporter)
	}
	cert, err := identity.ParseCert(d.ann.Cert)
	if err != nil {
		return Report{}, fmt.Errorf("report by %s: certificate: %w", r.Reporter, err)
	}
	if !identity.VerifyPayload(cert.PublicKey, SignedReport(r.body()), sig) {
		return Report{}, fmt.Errorf("report by %s: bad signature", r.Reporter)
	}
	return r, nil
}

// isSiteGateway reports whether name is a gateway of this site, draining
// or not.
func (s *State) isSiteGateway(local Local, name string) bool {
	if name == local.Name {
		return local.Gateway
	}
	p, ok := s.PeerByName(name)
	if !ok || p.WAN {
		return false
	}
	d := s.decoded[name]
	return d != nil && d.err == nil && d.ann.Role.Gateway
}

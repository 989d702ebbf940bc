package config

import (
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Every key the file may contain. This list is the public contract: the
// unknown-key check, env binding and the example-file test all derive from
// it, so adding a key here without documenting it fails the tests.
const (
	keyNodeName      = "node_name"
	keyDataDir       = "data_dir"
	keyControlSocket = "control_socket"
	keyLogLevel      = "log_level"
	keyLogFormat     = "log_format"

	keyBindAddr      = "cluster.bind_addr"
	keyBindPort      = "cluster.bind_port"
	keyAdvertiseAddr = "cluster.advertise_addr"
	keyJoin          = "cluster.join"
	keyGossipKeyFile = "cluster.gossip_key_file"

	keyInterface  = "wireguard.interface"
	keyListenPort = "wireguard.listen_port"
	keyMode       = "wireguard.mode"
	keyMTU        = "wireguard.mtu"
	keyEndpoint   = "wireguard.endpoint"
	keyKeepalive  = "wireguard.persistent_keepalive"

	keyTableBase    = "routing.table_base"
	keyRulePriority = "routing.rule_priority"

	keySegments = "segments"

	segKeyName       = "name"
	segKeyCIDR       = "cidr"
	segKeySubnet     = "subnet"
	segKeyHostPrefix = "host_prefix"
)

const defaultSerfPort = 7946

// defaults covers every scalar key (plus join). Registering each one with
// viper is what makes MESHD_* overrides work when the key is absent from the
// file. node_name defaults to "" here and is resolved to the hostname later,
// so a failing os.Hostname only matters when node_name is actually unset.
var defaults = []struct {
	key string
	val any
}{
	{keyNodeName, ""},
	{keyDataDir, "/var/lib/meshd"},
	{keyControlSocket, "/run/meshd/meshd.sock"},
	{keyLogLevel, "info"},
	{keyLogFormat, "text"},

	{keyBindAddr, "0.0.0.0"},
	{keyBindPort, defaultSerfPort},
	{keyAdvertiseAddr, ""},
	{keyJoin, []string{}},
	{keyGossipKeyFile, "/etc/meshd/gossip.key"},
	{keyProfile, string(ProfileLAN)},
	{keyProbeInterval, ""},

	{keyInterface, "mesh0"},
	{keyListenPort, 51820},
	{keyMode, string(ModeAuto)},
	{keyMTU, 0},
	{keyEndpoint, ""},
	{keyKeepalive, "0s"},

	{keySiteName, defaultSiteName},
	{keySiteGateway, false},
	{keyWANBindAddr, "0.0.0.0"},
	{keyWANBindPort, defaultWANPort},
	{keyWANAdvertise, ""},
	{keyWANJoin, []string{}},

	{keyTableBase, 51800},
	{keyRulePriority, 31000},

	{keyGossipKeyring, ""},
	{keyCAFile, ""},
	{keyCertFile, ""},
	{keyKeyFile, ""},
	{keyIdentityMode, string(TrustStrict)},

	{keyCNIConfDir, defaultCNIConfDir},
	{keyCNIIPAMDir, defaultCNIIPAMDir},
	{keyDockerPluginSocket, defaultDockerPluginSocket},
	{keyMetricsListen, ""},
	{keyUntracked, false},
}

var segmentKeys = []string{segKeyName, segKeyCIDR, segKeySubnet, segKeyHostPrefix, segKeySiteBlock}

// knownKeys returns every dotted key accepted in the file, including
// "segments" and "allow" themselves.
func knownKeys() []string {
	keys := make([]string, 0, len(defaults)+1)
	for _, d := range defaults {
		keys = append(keys, d.key)
	}
	return append(keys, keySegments, keyAllow)
}

// sections are the tables that hold keys; writing one as a scalar, or a
// typo'd table name, deserves a different message than a stray key.
var sections = []string{"cluster", sectionSite, sectionWAN, "wireguard", "routing", sectionMetrics, sectionIdentity, sectionPolicy}

func envName(key string) string {
	return "MESHD_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

// checkUnknownKeys rejects keys meshd would silently ignore; a typo such as
// "listen_prot" otherwise leaves the default in force with no hint why.
func checkUnknownKeys(all []string) *Error {
	known := knownKeys()
	isKnown := make(map[string]bool, len(known))
	for _, k := range known {
		isKnown[k] = true
	}
	sorted := append([]string(nil), all...)
	sort.Strings(sorted)
	for _, k := range sorted {
		if isKnown[k] {
			continue
		}
		return unknownKeyError(k, known)
	}
	return nil
}

func unknownKeyError(k string, known []string) *Error {
	if slices.Contains(sections, k) {
		return fail(k, "must be a table, not a value",
			fmt.Sprintf("put its keys under a [%s] header", k))
	}
	if strings.HasPrefix(k, keySegments+".") {
		return fail(keySegments, "must be an array of tables",
			"write each segment under its own [[segments]] header (double brackets)")
	}
	if e := allowKeyError(k); e != nil {
		return e
	}
	section, _ := splitKey(k)
	s := suggest(k, known)
	if s == "" && section != "" && !knownSection(section, known) {
		return unknownSectionError(section)
	}
	if s != "" {
		sugSection, sugLeaf := splitKey(s)
		if sugSection == section {
			return fail(k, "unknown key", fmt.Sprintf("did you mean %q?", sugLeaf))
		}
		return fail(k, "unknown key", fmt.Sprintf("did you mean %q%s?", sugLeaf, where(sugSection)))
	}
	return fail(k, "unknown key", "remove it; known keys"+where(section)+" are: "+
		strings.Join(leavesIn(section, known), ", "))
}

func knownSection(section string, known []string) bool {
	for _, k := range known {
		if s, _ := splitKey(k); s == section {
			return true
		}
	}
	return false
}

// unknownSectionError names a table meshd does not have, rather than
// listing top-level keys as if the stray key belonged there.
func unknownSectionError(section string) *Error {
	fix := "remove it; the sections are [" + strings.Join(sections, "], [") + "], [[segments]] and [[allow]]"
	if s := suggest(section, sections); s != "" {
		fix = fmt.Sprintf("did you mean [%s]?", s)
	}
	return fail(section, "unknown section ["+section+"]", fix)
}

func where(section string) string {
	if section == "" {
		return " at the top level"
	}
	return " under [" + section + "]"
}

func leavesIn(section string, known []string) []string {
	var out []string
	for _, k := range known {
		if s, leaf := splitKey(k); s == section {
			out = append(out, leaf)
		}
	}
	if len(out) == 0 {
		// The section itself is unknown: list the top level instead.
		return leavesIn("", known)
	}
	return out
}

func splitKey(k string) (section, leaf string) {
	if i := strings.LastIndex(k, "."); i >= 0 {
		return k[:i], k[i+1:]
	}
	return "", k
}

// suggest returns the known key closest to unknown, or "" if none is close
// enough to be a plausible typo. A key in the wrong table costs one edit so
// that "bind_port" at the top level still finds "cluster.bind_port".
func suggest(unknown string, known []string) string {
	uSection, uLeaf := splitKey(unknown)
	best, bestDist := "", int(^uint(0)>>1)
	for _, k := range known {
		kSection, kLeaf := splitKey(k)
		d := editDistance(uLeaf, kLeaf)
		if kSection != uSection {
			d++
		}
		if d < bestDist {
			best, bestDist = k, d
		}
	}
	limit := 1
	if len(uLeaf) > 5 {
		limit = 2
	}
	if bestDist > limit {
		return ""
	}
	return best
}

// editDistance is the optimal-string-alignment distance: Levenshtein plus
// adjacent transpositions, the commonest typing slip ("prot" for "port").
func editDistance(a, b string) int {
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}

// checkTableKeys rejects keys of one array-of-tables entry ([[segments]],
// [[allow]]) that are not in known, in a stable order. what names the
// entry in the fix ("a segment"); key renders a key's full name for the
// error, e.g. "segments[2].cidr".
func checkTableKeys(t map[string]any, known []string, what string, key func(string) string) *Error {
	keys := make([]string, 0, len(t))
	for k := range t {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if slices.Contains(known, k) {
			continue
		}
		fix := "remove it; " + what + " has only: " + strings.Join(known, ", ")
		if s := suggest(k, known); s != "" {
			fix = fmt.Sprintf("did you mean %q?", s)
		}
		return fail(key(k), "unknown key", fix)
	}
	return nil
}

package config

import (
	"fmt"
	"slices"
	"sort"
	"strings"
)

// envPrefix starts every variable that overrides a key (see envName).
const envPrefix = "MESHD_"

// checkEnv refuses MESHD_ variables that look like a config key but name
// none: viper would ignore MESHD_WIREGUARD_MTUU and leave the default in
// force, the very silent fallback the unknown-key check exists to stop.
//
// Only variables that could be meant as a key are looked at: those that
// name a section (MESHD_WIREGUARD_...) and those one typo away from a
// key's variable (MESHD_NODE_NAEM, MESHD_JOIN). Everything else with the
// prefix (MESHD_E2E_LOGS, MESHD_VAGRANT_LAYOUT, MESHD_CHECK_ALL, the
// scripts' own settings) belongs to other tools and is left alone, so
// they never need to be listed here.
func checkEnv(environ []string) *Error {
	settable := envKeys()
	var names []string
	for _, kv := range environ {
		name, val, _ := strings.Cut(kv, "=")
		// viper ignores empty variables, so an empty one changes nothing.
		if strings.HasPrefix(name, envPrefix) && val != "" {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	for _, name := range names {
		if e := checkEnvName(name, settable); e != nil {
			return e
		}
	}
	return nil
}

// envKeys are the keys an environment variable can set: every scalar
// key and join lists, not the arrays of tables.
func envKeys() []string {
	keys := make([]string, 0, len(defaults))
	for _, d := range defaults {
		keys = append(keys, d.key)
	}
	return keys
}

func checkEnvName(name string, settable []string) *Error {
	if slices.ContainsFunc(settable, func(k string) bool { return envName(k) == name }) {
		return nil
	}
	if name == envName(keySegments) || name == envName(keyAllow) {
		return fail(name, "sets an array of tables, which the environment cannot express",
			"unset it and write [["+strings.ToLower(strings.TrimPrefix(name, envPrefix))+"]] tables in the config file")
	}
	key, ok := envKey(name, settable)
	if !ok {
		return nil
	}
	problem := "is set in the environment but names no config key, so it would be ignored"
	if s := suggest(key, settable); s != "" {
		return fail(name, problem, fmt.Sprintf("did you mean %s (%s)? rename or unset it", envName(s), s))
	}
	section, _ := splitKey(key)
	var vars []string
	for _, k := range settable {
		if s, _ := splitKey(k); s == section {
			vars = append(vars, envName(k))
		}
	}
	return fail(name, problem, fmt.Sprintf("unset it; the variables for [%s] are %s", section, strings.Join(vars, ", ")))
}

// envKey reads a variable name as the dotted key it would set, and says
// whether the variable could be meant as a key at all. Underscores
// separate both the section and the words of a key, so a section is
// recognised by its name.
func envKey(name string, settable []string) (string, bool) {
	rest := strings.ToLower(strings.TrimPrefix(name, envPrefix))
	for _, section := range sections {
		if leaf, ok := strings.CutPrefix(rest, section+"_"); ok {
			return section + "." + leaf, true
		}
	}
	return rest, suggest(rest, settable) != ""
}

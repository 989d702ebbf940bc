package config

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"syscall"

	"github.com/pelletier/go-toml/v2"
	"github.com/spf13/viper"
)

// Load reads and validates the TOML file at path, applying MESHD_SECTION_KEY
// environment overrides. It only reads: nothing on the host is created or
// changed, so it is safe to call from "meshd check"-style commands.
// Every error it returns is a *Error.
func Load(path string) (*Config, error) { return load(path, false) }

// LoadClient is Load for the commands that only reach a running daemon
// through its control socket or preview its allow rules (status, reload,
// rotate-key, gossip-key, policy explain). It accepts the host's own
// certificate outside its validity period: a certificate that expired
// must not also break the health probe that reports it. Everything else
// is checked as by Load; 'meshd run' and 'meshd check' use Load.
func LoadClient(path string) (*Config, error) { return load(path, true) }

func load(path string, client bool) (*Config, error) {
	if path == "" {
		return nil, &Error{Problem: "no config file given", Fix: "pass --config with the path to meshd.toml"}
	}
	v := newViper()
	v.SetConfigFile(path)
	if err := v.ReadInConfig(); err != nil {
		e := readError(err)
		e.Path = path
		return nil, e
	}
	return finish(v, path, client)
}

// Parse is Load for an in-memory document (tests, stdin). Environment
// overrides still apply and gossip_key_file is still read from disk.
func Parse(r io.Reader) (*Config, error) {
	v := newViper()
	if err := v.ReadConfig(r); err != nil {
		return nil, readError(err)
	}
	return finish(v, "", false)
}

func newViper() *viper.Viper {
	v := viper.New()
	v.SetConfigType("toml")
	v.SetEnvPrefix("MESHD")
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	v.AutomaticEnv()
	for _, d := range defaults {
		v.SetDefault(d.key, d.val)
		// BindEnv cannot fail with an explicit key.
		_ = v.BindEnv(d.key)
	}
	return v
}

// finish returns a typed nil on success: returning a nil *Error as error
// would make err != nil true for callers.
func finish(v *viper.Viper, path string, client bool) (*Config, error) {
	cfg, e := build(v, client)
	if e != nil {
		e.Path = path
		return nil, e
	}
	return cfg, nil
}

func readError(err error) *Error {
	e := &Error{Err: err}
	var de *toml.DecodeError
	var pe viper.ConfigParseError
	switch {
	case errors.Is(err, fs.ErrNotExist):
		e.Problem = "file does not exist"
		e.Fix = "create it (config.example.toml is a starting point) or pass --config with the right path"
	case errors.Is(err, fs.ErrPermission):
		e.Problem = "cannot read the file: permission denied"
		e.Fix = "make it readable by meshd or pass --config with another path"
	case errors.Is(err, syscall.EISDIR):
		e.Problem = "is a directory"
		e.Fix = "pass --config with the path of the TOML file itself"
	case errors.As(err, &de):
		line, col := de.Position()
		e.Problem = fmt.Sprintf("invalid TOML at line %d, column %d: %s", line, col, de.Error())
		e.Fix = "correct the syntax (see config.example.toml)"
	case errors.As(err, &pe):
		// Semantic TOML errors such as duplicate keys carry no position.
		e.Problem = fmt.Sprintf("invalid TOML: %v", pe.Unwrap())
		e.Fix = "correct the file (see config.example.toml)"
	default:
		e.Problem = fmt.Sprintf("cannot read the file: %v", err)
		e.Fix = "check the file, or pass --config with another path"
	}
	return e
}

func build(v *viper.Viper, client bool) (*Config, *Error) {
	if e := checkUnknownKeys(v.AllKeys()); e != nil {
		return nil, e
	}
	if e := checkEnv(os.Environ()); e != nil {
		return nil, e
	}
	l := &loader{v: v, client: client}
	cfg := &Config{}
	// Segments come before routing (the table range depends on their
	// count) and allow (rules name them).
	for _, step := range []func(*Config) *Error{l.top, l.cluster, l.wireguard, l.segments, l.site, l.routing, l.allow, l.ops, l.trust} {
		if e := step(cfg); e != nil {
			return nil, e
		}
	}
	return cfg, nil
}

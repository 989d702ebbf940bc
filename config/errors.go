package config

import (
	"errors"
	"strings"
)

// Error is the only error type Load and Parse return, so the CLI can tell
// "the operator must edit a file" (exit code 2) apart from runtime failures.
type Error struct {
	// Path is the config file; empty when the input came from Parse.
	Path string
	// Key is the dotted key at fault ("wireguard.listen_port",
	// "segments[1].subnet"); empty when the file as a whole is at fault.
	Key     string
	Problem string
	Fix     string
	// Err is the underlying cause, if there is one.
	Err error
}

// Error renders a single line: operators grep logs and journald splits on
// newlines, so a multi-line message would be torn apart.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("config")
	if e.Path != "" {
		b.WriteString(" ")
		b.WriteString(e.Path)
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	b.WriteString(e.Problem)
	if e.Fix != "" {
		b.WriteString("; ")
		b.WriteString(e.Fix)
	}
	return oneLine(b.String())
}

func (e *Error) Unwrap() error { return e.Err }

// IsConfigError reports whether err (or anything it wraps) is a *Error.
func IsConfigError(err error) bool {
	var ce *Error
	return errors.As(err, &ce)
}

// oneLine collapses any embedded line breaks (from parser messages or
// odd file names) so Error keeps its one-line promise.
func oneLine(s string) string {
	if !strings.ContainsAny(s, "\r\n") {
		return s
	}
	return strings.Join(strings.Fields(s), " ")
}

func fail(key, problem, fix string) *Error {
	return &Error{Key: key, Problem: problem, Fix: fix}
}

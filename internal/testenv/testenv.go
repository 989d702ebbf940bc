// Package testenv decides whether tests that need root and network
// namespaces may run. In CI they must run: a skip there would hide a
// broken data plane behind a green build.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the tests run under CI (CI=true), where nothing that
// needs privileges may be skipped.
func InCI() bool {
	v := os.Getenv("CI")
	return v != "" && v != "false" && v != "0"
}

// RequireRoot skips the test outside CI when the process is not root, and
// fails it in CI.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if InCI() {
		t.Fatal("this test needs root and network namespaces; CI must run it as root")
	}
	t.Skip("needs root and network namespaces (run as root, or set CI=true to make this a failure)")
}

// RequireTools skips (outside CI) or fails (in CI) when a command-line tool
// the test drives is missing; .ci/run installs them all.
func RequireTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if InCI() {
				t.Fatalf("tool %q is missing; .ci/run must install it", tool)
			}
			t.Skipf("tool %q is not installed (apt-get install --no-install-recommends it)", tool)
		}
	}
}

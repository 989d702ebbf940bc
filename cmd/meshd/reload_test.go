package main

import (
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshd/meshd/control"
)

// fakeReloader answers reloads with res and records what was asked.
func fakeReloader(t *testing.T, sock string, res control.ReloadResult) *[]control.ReloadRequest {
	t.Helper()
	srv, err := control.Listen(sock, fakeDaemon(control.Status{}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	var asked []control.ReloadRequest
	srv.Handle("POST /v1/reload", func(w http.ResponseWriter, r *http.Request) {
		var req control.ReloadRequest
		body, _ := io.ReadAll(r.Body)
		json.Unmarshal(body, &req)
		asked = append(asked, req)
		json.NewEncoder(w).Encode(res)
	})
	return &asked
}

func TestReloadSaysWhatNeedsARestart(t *testing.T) {
	cfg := writeTestConfig(t, "")
	sock := filepath.Join(filepath.Dir(cfg), "meshd.sock")
	asked := fakeReloader(t, sock, control.ReloadResult{Applied: []string{"2 allow rules"}, Restart: []string{"segments[1].cidr", "wireguard.listen_port"}})
	out, code := execute(t, "reload", "--config", cfg)
	if code != 1 || !strings.Contains(out, "reloaded: 2 allow rules\n") ||
		!strings.Contains(out, "meshd: not applied: segments[1].cidr, wireguard.listen_port changed, which takes effect only when meshd restarts") {
		t.Errorf("reload with settings that need a restart: exit %d\n%s", code, out)
	}
	if len(*asked) != 1 || (*asked)[0].Config != cfg {
		t.Errorf("the daemon was asked %+v, want the config file %s named", *asked, cfg)
	}
	if out, code := execute(t, "reload", "--config", cfg, "--socket", sock); code != 2 || !strings.Contains(out, "--config and --socket together") {
		t.Errorf("reload --config --socket: exit %d\n%s", code, out)
	}
	if len(*asked) != 1 {
		t.Error("a refused command still reached the daemon")
	}
}

func TestReloadOfTheRulesAloneExitsZero(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "meshd.sock")
	asked := fakeReloader(t, sock, control.ReloadResult{Applied: []string{"1 allow rule"}, Restart: []string{}})
	if out, code := execute(t, "reload", "--socket", sock); code != 0 || out != "reloaded: 1 allow rule\n" {
		t.Errorf("exit %d\n%s", code, out)
	}
	if (*asked)[0].Config != "" {
		t.Errorf("--socket alone named a config file: %+v", (*asked)[0])
	}
}

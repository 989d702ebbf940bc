package daemon

import (
	"path/filepath"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshd/meshd/crypto"
	"github.com/meshd/meshd/wgdev"
)

// rotateKey replaces the WireGuard key: saved first (a crash must not
// lose it), then the device, then the announcement, after which peers
// swap the old key for the new one. Sessions re-handshake; TCP streams
// ride it out on their retransmissions. Runs on the loop.
func (d *Daemon) rotateKey() (wgtypes.Key, error) {
	key, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return wgtypes.Key{}, err
	}
	cfg := d.config()
	if err := crypto.WritePrivateKey(filepath.Join(cfg.DataDir, crypto.KeyFileName), key); err != nil {
		return wgtypes.Key{}, err
	}
	dev := d.device()
	if err := wgdev.Configure(dev, dev.Name(), key, cfg.WireGuard.ListenPort); err != nil {
		return wgtypes.Key{}, err
	}
	old := d.ann.setKey(key)
	d.log.Info("rotated WireGuard key", "old", crypto.Fingerprint(old.PublicKey()), "new", crypto.Fingerprint(key.PublicKey()))
	err = d.ann.publish()
	d.Kick()
	return key.PublicKey(), err
}

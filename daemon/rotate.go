package daemon

import (
	"errors"
	"fmt"
	"path/filepath"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshd/meshd/crypto"
	"github.com/meshd/meshd/wgdev"
)

// rotateKey replaces the WireGuard key: saved first (a crash must not
// lose it), then the device, then the announcement, after which peers
// swap the old key for the new one. Sessions re-handshake; TCP streams
// ride it out on their retransmissions. A device that refuses the new
// key gets the old one back on disk too, so a restart does not switch
// keys that no peer was told of. Runs on the loop.
func (d *Daemon) rotateKey() (wgtypes.Key, error) {
	key, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return wgtypes.Key{}, err
	}
	cfg := d.config()
	path := filepath.Join(cfg.DataDir, crypto.KeyFileName)
	prev := d.ann.privateKey()
	if err := crypto.WritePrivateKey(path, key); err != nil {
		return wgtypes.Key{}, err
	}
	dev := d.device()
	if err := wgdev.Configure(dev, dev.Name(), key, cfg.WireGuard.ListenPort); err != nil {
		return wgtypes.Key{}, errors.Join(fmt.Errorf("the device refused the new key, so the old one stays: %w", err), d.restoreKey(path, prev))
	}
	old := d.ann.setKey(key)
	d.log.Info("rotated WireGuard key", "old", crypto.Fingerprint(old.PublicKey()), "new", crypto.Fingerprint(key.PublicKey()))
	err = d.ann.publish()
	d.Kick()
	return key.PublicKey(), err
}

// restoreKey puts the announced key back into the file and the device
// after a rotation failed half-way. A device left with the new key is
// also put right by the next health check; the file is not, so its
// failure is named with the fix.
func (d *Daemon) restoreKey(path string, key wgtypes.Key) error {
	var errs []error
	if err := crypto.WritePrivateKey(path, key); err != nil {
		errs = append(errs, fmt.Errorf("%s now holds a key no peer knows, and putting the old one back failed (%w): run meshd rotate-key again before restarting meshd", path, err))
	}
	dev := d.device()
	if err := wgdev.Configure(dev, dev.Name(), key, d.config().WireGuard.ListenPort); err != nil {
		d.log.Warn("could not put the old key back on the device; the health check retries", "interface", dev.Name(), "err", err)
		d.kickFull()
	}
	d.log.Warn("key rotation undone: the device refused the new key", "key", crypto.Fingerprint(key.PublicKey()))
	return errors.Join(errs...)
}

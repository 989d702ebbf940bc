package identity

import (
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
)

// announceDomain keeps an announcement signature from being valid as any
// other message signed by the same host key, and vice versa.
const announceDomain = "meshd-announce-v1\x00"

// MaxTagDecoded is the most a single tag can carry: everything beyond it
// could never fit in serf's tag budget, so decoding more is wasted work on
// hostile input.
const MaxTagDecoded = 440 * 3 / 4

// SignPayload signs an announcement payload built by the mesh package.
func SignPayload(key ed25519.PrivateKey, payload []byte) []byte {
	return ed25519.Sign(key, domainMessage(payload))
}

// VerifyPayload checks lengths first because ed25519.Verify panics on a
// malformed public key, and both inputs may come from the network.
func VerifyPayload(pub ed25519.PublicKey, payload, sig []byte) bool {
	if len(pub) != ed25519.PublicKeySize || len(sig) != ed25519.SignatureSize {
		return false
	}
	return ed25519.Verify(pub, domainMessage(payload), sig)
}

func domainMessage(payload []byte) []byte {
	return append([]byte(announceDomain), payload...)
}

// EncodeTag uses unpadded base64, the shortest text serf tags can carry.
func EncodeTag(b []byte) string {
	return base64.RawStdEncoding.EncodeToString(b)
}

// DecodeTag is EncodeTag's strict inverse: the length is bounded before
// decoding, and any other spelling of the same bytes (newlines, non-zero
// padding bits) is refused, so each value has exactly one encoding.
func DecodeTag(s string) ([]byte, error) {
	if len(s) > base64.RawStdEncoding.EncodedLen(MaxTagDecoded) {
		return nil, fmt.Errorf("tag is %d characters, at most %d allowed", len(s), base64.RawStdEncoding.EncodedLen(MaxTagDecoded))
	}
	b, err := base64.RawStdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("tag is not unpadded base64: %w", err)
	}
	if EncodeTag(b) != s {
		return nil, errors.New("tag is not canonical unpadded base64")
	}
	return b, nil
}

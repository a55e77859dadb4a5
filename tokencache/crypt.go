package tokencache

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
)

// A KeyRing holds the AES-256 keys that encrypt cached tokens at rest. One
// key is active and encrypts every new token; every key in the ring
// decrypts, so keys rotate without a flag day: add the new key to every
// replica, then make it active, then, after a token lifetime, remove the
// old one. Each ciphertext records its key's id and is bound to its Redis
// key (AES-GCM associated data), so a value copied to another key does not
// decrypt. The metadata beside it (expiry, generation, fingerprints,
// refreshed_by) stays readable for redis-cli and Inspect.
//
// A KeyRing is safe for concurrent use. Replace swaps its keys while the
// caches that use it run, for a ring re-read from a file.
type KeyRing struct {
	keys atomic.Pointer[ringKeys]
}

// ringKeys is one immutable set of keys of a KeyRing.
type ringKeys struct {
	active string
	aeads  map[string]cipher.AEAD
	fpKeys map[string][]byte // per key id: the HMAC key of credential fingerprints
}

// snapshot returns the ring's keys of the moment; nil for a nil ring.
func (kr *KeyRing) snapshot() *ringKeys {
	if kr == nil {
		return nil
	}
	return kr.keys.Load()
}

// Replace makes kr hold next's keys from now on, for every cache that
// uses kr: the next token written is sealed under next's active key, the
// next read opens with next's keys, and credential fingerprints are keyed
// under next's active key. Keep the previous active key in next until the
// tokens it sealed have expired (a token lifetime), as for any rotation,
// or replicas cannot open them. A nil next is ignored.
func (kr *KeyRing) Replace(next *KeyRing) {
	if k := next.snapshot(); k != nil {
		kr.keys.Store(k)
	}
}

// keyedFPPrefix starts a credential fingerprint keyed by a ring's key.
const keyedFPPrefix = "hmac-sha256:"

// fingerprint is the credential fingerprint of identity under the ring's
// key keyID, or "" if the ring has no such key.
func (kr *ringKeys) fingerprint(keyID, identity string) string {
	k, ok := kr.fpKeys[keyID]
	if !ok {
		return ""
	}
	m := hmac.New(sha256.New, k)
	m.Write([]byte(identity))
	return keyedFPPrefix + keyID + ":" + hex.EncodeToString(m.Sum(nil)[:8])
}

// NewKeyRing returns a ring whose active key is activeID. Every key must
// be 32 bytes; ids are 1-32 letters, digits, '-' or '_'.
func NewKeyRing(activeID string, keys map[string][]byte) (*KeyRing, error) {
	kr := &ringKeys{active: activeID, aeads: map[string]cipher.AEAD{}, fpKeys: map[string][]byte{}}
	for id, k := range keys {
		if !validKeyID(id) {
			return nil, fmt.Errorf("tokencache: encryption key id %q: use 1-32 letters, digits, '-' or '_'", id)
		}
		if len(k) != 32 {
			return nil, fmt.Errorf("tokencache: encryption key %q is %d bytes, want 32 (AES-256)", id, len(k))
		}
		block, err := aes.NewCipher(k)
		if err != nil {
			return nil, fmt.Errorf("tokencache: encryption key %q: %w", id, err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("tokencache: encryption key %q: %w", id, err)
		}
		kr.aeads[id] = aead
		// A key of its own for fingerprints, derived one way from the
		// encryption key: a fingerprint reveals nothing about either.
		m := hmac.New(sha256.New, k)
		m.Write([]byte("tokencache/credential-fingerprint/v1"))
		kr.fpKeys[id] = m.Sum(nil)
	}
	if _, ok := kr.aeads[activeID]; !ok {
		return nil, fmt.Errorf("tokencache: the active encryption key %q is not in the ring", activeID)
	}
	ring := &KeyRing{}
	ring.keys.Store(kr)
	return ring, nil
}

// ParseKeyRing reads a ring from "id:base64key[,id:base64key...]" (standard
// or URL base64 of 32 bytes); the first key is the active one. Generate a
// key with `openssl rand -base64 32`.
func ParseKeyRing(spec string) (*KeyRing, error) {
	keys := map[string][]byte{}
	var active string
	for i, part := range strings.Split(strings.TrimSpace(spec), ",") {
		id, b64, ok := strings.Cut(strings.TrimSpace(part), ":")
		if !ok || id == "" {
			return nil, fmt.Errorf("tokencache: encryption key %d: want id:base64key", i+1)
		}
		k, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			if k, err = base64.URLEncoding.DecodeString(b64); err != nil {
				return nil, fmt.Errorf("tokencache: encryption key %q is not base64", id)
			}
		}
		if _, dup := keys[id]; dup {
			return nil, fmt.Errorf("tokencache: encryption key %q given twice", id)
		}
		keys[id] = k
		if i == 0 {
			active = id
		}
	}
	return NewKeyRing(active, keys)
}

// ActiveKeyID is the id of the key that encrypts new tokens.
func (kr *KeyRing) ActiveKeyID() string {
	if k := kr.snapshot(); k != nil {
		return k.active
	}
	return ""
}

func validKeyID(id string) bool {
	if id == "" || len(id) > 32 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// KeyError reports a cached token this replica cannot decrypt: its key id
// is not in the ring (or there is no ring), or the ciphertext does not
// open under it (a wrong key with the right id, a value moved from another
// Redis key, tampering). It names the key id, never a key.
type KeyError struct {
	Key    string // the Redis key
	KeyID  string // the id recorded in the value
	Reason string
}

// Error implements the error interface.
func (e *KeyError) Error() string {
	return fmt.Sprintf("tokencache: cannot decrypt the token at %s with key id %q: %s", e.Key, e.KeyID, e.Reason)
}

// ErrDecrypt is matched (errors.Is) by every *KeyError.
var ErrDecrypt = errors.New("tokencache: cannot decrypt the cached token")

// Is makes errors.Is(err, ErrDecrypt) true for a *KeyError.
func (e *KeyError) Is(target error) bool { return target == ErrDecrypt }

// sealVersion marks values whose associated data covers the generation,
// the issue time and the TTL as well: an older sealed value written back,
// or one whose generation was raised by hand, fails to open instead of
// being served as the newest. Values sealed before it (no "seal" field)
// open under the first version's associated data; they come only from
// replicas of an earlier release and expire with their tokens.
const sealVersion = 2

// associatedData binds a ciphertext to its Redis key and to the metadata
// stored beside it, so neither can be swapped without failing to open.
func associatedData(redisKey, keyID string, rec record) []byte {
	if rec.Seal < sealVersion {
		return []byte(strings.Join([]string{"tokencache/v1", redisKey, keyID, rec.TokenFP, rec.ExpiresAt, rec.Fingerprint}, "\x00"))
	}
	return []byte(strings.Join([]string{"tokencache/v2", redisKey, keyID, rec.TokenFP, rec.ExpiresAt, rec.Fingerprint,
		rec.IssuedAt, strconv.FormatInt(rec.Generation, 10), strconv.FormatInt(rec.TTLMS, 10)}, "\x00"))
}

// seal encrypts rec's token for the Redis key redisKey:
// base64(nonce|ciphertext), with a fresh random nonce.
func (kr *KeyRing) seal(redisKey string, rec record) (keyID, sealed string, err error) {
	k := kr.snapshot()
	if k == nil {
		return "", "", errors.New("tokencache: an empty key ring (not from NewKeyRing)")
	}
	aead := k.aeads[k.active]
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(rec.AccessToken)+aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return "", "", err
	}
	rec.Seal = sealVersion
	out := aead.Seal(nonce, nonce, []byte(rec.AccessToken), associatedData(redisKey, k.active, rec))
	return k.active, base64.StdEncoding.EncodeToString(out), nil
}

// open decrypts what seal produced for the same Redis key and metadata, and
// checks the token against its recorded fingerprint.
func (kr *KeyRing) open(redisKey string, rec record) (string, error) {
	fail := func(reason string) error { return &KeyError{Key: redisKey, KeyID: rec.KeyID, Reason: reason} }
	k := kr.snapshot()
	if k == nil {
		return "", fail("no encryption keys are configured on this replica")
	}
	aead, ok := k.aeads[rec.KeyID]
	if !ok {
		return "", fail("the key id is not in this replica's key ring (or another deployment, with its own keys, writes this namespace)")
	}
	raw, err := base64.StdEncoding.DecodeString(rec.Ciphertext)
	if err != nil || len(raw) < aead.NonceSize()+aead.Overhead() {
		return "", fail("the ciphertext is malformed")
	}
	pt, err := aead.Open(nil, raw[:aead.NonceSize()], raw[aead.NonceSize():], associatedData(redisKey, rec.KeyID, rec))
	if err != nil {
		return "", fail("authentication failed (a wrong key, or a value moved or altered)")
	}
	if fingerprint(string(pt)) != rec.TokenFP {
		return "", fail("the token does not match its recorded fingerprint")
	}
	return string(pt), nil
}

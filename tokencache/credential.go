package tokencache

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"sync/atomic"
)

// This file is whose token an entry holds: the fingerprint of the
// credential its Fetcher identifies (see Identifier), how a fingerprint
// found in Redis or in an event is judged against it, and which one an
// event may carry.
//
// The credential may change while the cache runs (a Fetcher that reads a
// rotated key, such as basiq.NewFunc's, or a KeyRing replaced): the
// fingerprint is that of the Identity of the moment, under the ring's
// keys of the moment, so a token minted under the previous credential is
// another credential's from then on, and the next token written records
// the new one.

// credential is the credential of one entry's Fetcher.
type credential struct {
	f      Fetcher
	kr     *KeyRing               // the cache's key ring, if any
	last   atomic.Pointer[credFP] // the fingerprint last computed, and of what
	warned atomic.Bool            // logged a credential mismatch once
}

// credFP is a computed fingerprint with what it was computed from.
type credFP struct {
	identity string
	ring     *ringKeys
	fp       string
}

// identity returns the Fetcher's Identity, and false if it has none.
func (cr *credential) identity() (string, bool) {
	id, ok := cr.f.(Identifier)
	if !ok {
		return "", false
	}
	return id.Identity(), true
}

// fingerprint is the fingerprint of the credential as it is now; "" if
// the Fetcher has no Identity. It is recomputed only when the Identity or
// the ring's keys changed.
func (cr *credential) fingerprint() string {
	identity, ok := cr.identity()
	if !ok {
		return ""
	}
	ring := cr.kr.snapshot()
	if l := cr.last.Load(); l != nil && l.ring == ring && l.identity == identity {
		return l.fp
	}
	fp := fingerprintOf(identity, ring)
	cr.last.Store(&credFP{identity: identity, ring: ring, fp: fp})
	return fp
}

// fingerprintOf is the fingerprint of identity: keyed under the ring's
// active key, or unkeyed without a ring (see identityFingerprint).
func fingerprintOf(identity string, ring *ringKeys) string {
	if ring != nil {
		return ring.fingerprint(ring.active, identity)
	}
	sum := sha256.Sum256([]byte("tokencache/identity/v1\x00" + identity))
	return "sha256:" + hex.EncodeToString(sum[:8])
}

// same reports whether fp, a fingerprint found in Redis or in an event,
// names the entry's credential.
func (cr *credential) same(fp string) bool {
	same, _ := cr.check(fp)
	return same
}

// check reports whether fp names the entry's credential, and whether
// this replica can tell: a keyed fingerprint may be under any key of the
// ring (replicas rotate the active key one by one), but not under a key
// this replica lacks.
func (cr *credential) check(fp string) (same, known bool) {
	if fp == cr.fingerprint() {
		return true, true
	}
	identity, ok := cr.identity()
	if !ok {
		return false, true
	}
	if strings.HasPrefix(fp, "sha256:") {
		// Written by a replica without a key ring.
		return fp == fingerprintOf(identity, nil), true
	}
	if !strings.HasPrefix(fp, keyedFPPrefix) {
		return false, true
	}
	keyID, _, _ := strings.Cut(strings.TrimPrefix(fp, keyedFPPrefix), ":")
	ring := cr.kr.snapshot()
	if ring == nil {
		return false, false
	}
	want := ring.fingerprint(keyID, identity)
	if want == "" {
		return false, false
	}
	return hmac.Equal([]byte(want), []byte(fp)), true
}

// forEvent is the credential fingerprint an event may carry: the keyed
// one, or none (an unkeyed one would let anyone who can subscribe test
// guesses of the credential offline).
func (cr *credential) forEvent() string {
	if fp := cr.fingerprint(); strings.HasPrefix(fp, keyedFPPrefix) {
		return fp
	}
	return ""
}

package tokencache

import (
	"crypto/hmac"
	"strings"
	"sync/atomic"
)

// This file is whose token an entry holds: the fingerprint of the
// credential its Fetcher identifies (see Identifier), how a fingerprint
// found in Redis or in an event is judged against it, and which one an
// event may carry.

// credential is the credential of one entry's Fetcher.
type credential struct {
	fp     string // the credential's fingerprint; "" if the Fetcher has no Identity
	f      Fetcher
	kr     *KeyRing    // the cache's key ring, if any
	warned atomic.Bool // logged a credential mismatch once
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
	if fp == cr.fp {
		return true, true
	}
	id, ok := cr.f.(Identifier)
	if !ok {
		return false, true
	}
	if strings.HasPrefix(fp, "sha256:") {
		// Written by a replica without a key ring.
		return fp == identityFingerprint(cr.f, nil), true
	}
	kr := cr.kr
	if !strings.HasPrefix(fp, keyedFPPrefix) {
		return false, true
	}
	keyID, _, _ := strings.Cut(strings.TrimPrefix(fp, keyedFPPrefix), ":")
	if kr == nil {
		return false, false
	}
	want := kr.fingerprint(keyID, id.Identity())
	if want == "" {
		return false, false
	}
	return hmac.Equal([]byte(want), []byte(fp)), true
}

// forEvent is the credential fingerprint an event may carry: the keyed
// one, or none (an unkeyed one would let anyone who can subscribe test
// guesses of the credential offline).
func (cr *credential) forEvent() string {
	if strings.HasPrefix(cr.fp, keyedFPPrefix) {
		return cr.fp
	}
	return ""
}

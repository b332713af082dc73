package dkim

import (
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"strings"
	"sync"
)

// publicKey is a parsed DKIM key record (RFC 6376 section 3.6.1).
type publicKey struct {
	keyType string // k=: "rsa" (the default) or "ed25519" (RFC 8463)
	rsa     *rsa.PublicKey
	ed      ed25519.PublicKey
	hashes  []string // h=, lower-case; nil means any
	strict  bool     // t=s: the AUID's domain must be d= itself
}

// maxRSABits bounds the RSA keys verified: a larger key costs verification
// time out of proportion (RFC 8301 asks verifiers for 1024 to 4096 bits).
const maxRSABits = 8192

// parseKey parses a key record. Unknown tags and flags are ignored, as
// section 3.6.1 requires.
func parseKey(txt string) (*publicKey, error) {
	tags, order, err := tagList(txt)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errKeyRecord, err)
	}
	// v=, if present, MUST be first and "DKIM1".
	if v, ok := tags["v"]; ok && (v != "DKIM1" || order[0] != "v") {
		return nil, fmt.Errorf("%w: v=%s", errKeyRecord, v)
	}
	k := &publicKey{keyType: "rsa"}
	if t, ok := tags["k"]; ok {
		k.keyType = strings.ToLower(stripFWS(t))
	}
	if h, ok := tags["h"]; ok {
		for a := range strings.SplitSeq(h, ":") {
			k.hashes = append(k.hashes, strings.ToLower(trimFWS(a)))
		}
	}
	if s, ok := tags["s"]; ok {
		email := false
		for st := range strings.SplitSeq(s, ":") {
			st = trimFWS(st)
			email = email || st == "*" || strings.EqualFold(st, "email")
		}
		if !email {
			return nil, fmt.Errorf("%w: service type s=%s excludes email", errKeyRecord, s)
		}
	}
	if t, ok := tags["t"]; ok {
		for f := range strings.SplitSeq(t, ":") {
			k.strict = k.strict || trimFWS(f) == "s"
		}
	}
	p, ok := tags["p"]
	if !ok {
		return nil, fmt.Errorf("%w: no p= tag", errKeyRecord)
	}
	if stripFWS(p) == "" {
		return nil, ErrKeyRevoked
	}
	der, err := base64Value(p)
	if err != nil {
		return nil, fmt.Errorf("%w: p= is not base64", errKeyRecord)
	}
	switch k.keyType {
	case "rsa":
		pub, err := x509.ParsePKIXPublicKey(der)
		if err != nil {
			// Some signers publish a bare RSAPublicKey (PKCS #1).
			if pk, err1 := x509.ParsePKCS1PublicKey(der); err1 == nil {
				pub, err = pk, nil
			}
		}
		if err != nil {
			return nil, fmt.Errorf("%w: RSA key: %v", errKeyRecord, err)
		}
		r, ok := pub.(*rsa.PublicKey)
		if !ok {
			return nil, fmt.Errorf("%w: k=rsa but p= holds a %T", errKeyRecord, pub)
		}
		if r.N.BitLen() > maxRSABits {
			return nil, fmt.Errorf("%w: RSA key of %d bits is over %d", errKeyRecord, r.N.BitLen(), maxRSABits)
		}
		k.rsa = r
	case "ed25519":
		// RFC 8463 section 4.2: the raw 32-byte public key.
		if len(der) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("%w: ed25519 key of %d bytes, want %d", errKeyRecord, len(der), ed25519.PublicKeySize)
		}
		k.ed = ed25519.PublicKey(der)
	default:
		return nil, fmt.Errorf("%w: unknown key type k=%s", errKeyRecord, k.keyType)
	}
	return k, nil
}

// KeyCache keeps parsed key records, so that a busy host parses each key
// once rather than once per message. Entries are keyed by the record text,
// so a changed record is parsed anew; the DNS cache decides how long a
// record is used. It is safe for concurrent use; the zero value is not
// usable, use NewKeyCache.
type KeyCache struct {
	mu   sync.Mutex
	max  int
	keys map[string]keyEntry
}

type keyEntry struct {
	key *publicKey
	err error
}

// NewKeyCache returns a cache of at most size parsed records.
func NewKeyCache(size int) *KeyCache {
	return &KeyCache{max: max(size, 1), keys: map[string]keyEntry{}}
}

// parse returns the parsed record txt, from the cache if it is there.
func (c *KeyCache) parse(txt string) (*publicKey, error) {
	if c == nil {
		return parseKey(txt)
	}
	c.mu.Lock()
	e, ok := c.keys[txt]
	c.mu.Unlock()
	if ok {
		return e.key, e.err
	}
	k, err := parseKey(txt)
	c.mu.Lock()
	if len(c.keys) >= c.max {
		// Drop an arbitrary entry: the cache only saves parsing.
		for old := range c.keys {
			delete(c.keys, old)
			break
		}
	}
	c.keys[txt] = keyEntry{k, err}
	c.mu.Unlock()
	return k, err
}

package dkim

import (
	"crypto"
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
	prep    *rsaKey // rsa, prepared for verification
	ed      ed25519.PublicKey
	hashes  []string // h=, lower-case; nil means any
	strict  bool     // t=s: the AUID's domain must be d= itself
}

// verify checks sig over the header hash digest (RFC 6376 section 3.3;
// RFC 8463 section 3: Ed25519 signs the SHA-256 hash).
func (k *publicKey) verify(h crypto.Hash, digest, sig []byte) bool {
	switch {
	case k.prep != nil:
		return k.prep.verifyPKCS1v15(h, digest, sig)
	case k.ed != nil:
		return ed25519.Verify(k.ed, digest, sig)
	}
	return false
}

// maxRSABits bounds the RSA keys verified: a larger key costs verification
// time out of proportion (RFC 8301 asks verifiers for 1024 to 4096 bits).
const maxRSABits = 8192

// parseKey parses a key record. Unknown tags and flags are ignored, as
// section 3.6.1 requires.
func parseKey(txt string) (*publicKey, error) {
	tags, err := tagList(txt)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errKeyRecord, err)
	}
	// v=, if present, MUST be first and "DKIM1".
	if v, ok := tags.lookup("v"); ok && (v != "DKIM1" || tags[0].name != "v") {
		return nil, fmt.Errorf("%w: v=%s", errKeyRecord, v)
	}
	k := &publicKey{keyType: "rsa"}
	if t, ok := tags.lookup("k"); ok {
		k.keyType = strings.ToLower(stripFWS(t))
	}
	if h, ok := tags.lookup("h"); ok {
		for a := range strings.SplitSeq(h, ":") {
			k.hashes = append(k.hashes, strings.ToLower(trimFWS(a)))
		}
	}
	if s, ok := tags.lookup("s"); ok {
		email := false
		for st := range strings.SplitSeq(s, ":") {
			st = trimFWS(st)
			email = email || st == "*" || strings.EqualFold(st, "email")
		}
		if !email {
			return nil, fmt.Errorf("%w: service type s=%s excludes email", errKeyRecord, s)
		}
	}
	if t, ok := tags.lookup("t"); ok {
		for f := range strings.SplitSeq(t, ":") {
			k.strict = k.strict || trimFWS(f) == "s"
		}
	}
	p, ok := tags.lookup("p")
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
		if k.prep, err = newRSAKey(r); err != nil {
			return nil, fmt.Errorf("%w: RSA key: %v", errKeyRecord, err)
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

// MinRSABits is the shortest RSA key verified (RFC 8301 Section 3.2);
// RFC 8301 asks signers for 2048 bits.
const MinRSABits = 1024

// KeyInfo is what a key record holds, as a person checking a domain wants
// to see it.
type KeyInfo struct {
	Type    string   `json:"type"`             // k=: rsa or ed25519
	Bits    int      `json:"bits"`             // RSA modulus; 256 for ed25519
	Hashes  []string `json:"hashes,omitempty"` // h=, nil for any
	Strict  bool     `json:"strict"`           // t=s
	Testing bool     `json:"testing"`          // t=y
	// Verdict is how this verifier treats signatures with the key (RFC
	// 8301): "good", "acceptable (RFC 8301 asks for 2048 bits)" or
	// "refused: ..." (then Err says why).
	Verdict string `json:"verdict"`
}

// DescribeKey parses a key record as verification does and says what it
// holds. err is why signatures with it cannot verify (ErrKeyRevoked for an
// empty p=, a malformed record); KeyInfo is filled as far as the record
// could be read.
func DescribeKey(txt string) (KeyInfo, error) {
	var ki KeyInfo
	if tags, err := tagList(txt); err == nil {
		for f := range strings.SplitSeq(tags.get("t"), ":") {
			ki.Testing = ki.Testing || trimFWS(f) == "y"
		}
	}
	k, err := parseKey(txt)
	if err != nil {
		ki.Verdict = "refused: " + err.Error()
		return ki, err
	}
	ki.Type, ki.Hashes, ki.Strict = k.keyType, k.hashes, k.strict
	switch {
	case k.rsa != nil:
		ki.Bits = k.rsa.N.BitLen()
		switch {
		case ki.Bits < MinRSABits:
			ki.Verdict = fmt.Sprintf("refused: RSA key of %d bits, shorter than %d (RFC 8301)", ki.Bits, MinRSABits)
			return ki, errKeyTooWeak
		case ki.Bits < 2048:
			ki.Verdict = "acceptable (RFC 8301 asks signers for 2048 bits)"
		default:
			ki.Verdict = "good"
		}
	case k.ed != nil:
		ki.Bits, ki.Verdict = 256, "good"
	}
	return ki, nil
}

package dkim

import (
	"crypto"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"math/big"
	"testing"
)

// preparedTestKey is the RSA-2048 test key and its prepared public key.
func preparedTestKey(t testing.TB) (*rsa.PrivateKey, *rsaKey) {
	t.Helper()
	key := loadKey(t, "rsa2048.pem").(*rsa.PrivateKey)
	prep, err := newRSAKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return key, prep
}

// verifyPKCS1v15 says what crypto/rsa.VerifyPKCS1v15 says, for genuine
// signatures and for every kind of bad one.
func TestRSAVerifyMatchesStandardLibrary(t *testing.T) {
	key, prep := preparedTestKey(t)
	d256 := sha256.Sum256([]byte("header hash"))
	d1 := sha1.Sum([]byte("header hash"))
	sig256, _ := rsa.SignPKCS1v15(nil, key, crypto.SHA256, d256[:])
	sig1, _ := rsa.SignPKCS1v15(nil, key, crypto.SHA1, d1[:])
	other := sha256.Sum256([]byte("another header"))
	flip := func(b []byte, i int) []byte { c := append([]byte(nil), b...); c[i] ^= 1; return c }
	tooBig := new(big.Int).Add(key.N, big.NewInt(1)).FillBytes(make([]byte, len(sig256)))
	tests := []struct {
		name   string
		h      crypto.Hash
		digest []byte
		sig    []byte
	}{
		{"genuine sha256", crypto.SHA256, d256[:], sig256},
		{"genuine sha1", crypto.SHA1, d1[:], sig1},
		{"another digest", crypto.SHA256, other[:], sig256},
		{"a flipped bit at the start", crypto.SHA256, d256[:], flip(sig256, 0)},
		{"a flipped bit at the end", crypto.SHA256, d256[:], flip(sig256, len(sig256)-1)},
		{"sha1 signature checked as sha256", crypto.SHA256, d256[:], sig1},
		{"short signature", crypto.SHA256, d256[:], sig256[1:]},
		{"long signature", crypto.SHA256, d256[:], append([]byte{0}, sig256...)},
		{"signature not below the modulus", crypto.SHA256, d256[:], tooBig},
		{"all zero", crypto.SHA256, d256[:], make([]byte, len(sig256))},
		{"digest of the wrong size", crypto.SHA256, d1[:], sig256},
	}
	for _, tc := range tests {
		want := rsa.VerifyPKCS1v15(&key.PublicKey, tc.h, tc.digest, tc.sig) == nil
		if got := prep.verifyPKCS1v15(tc.h, tc.digest, tc.sig); got != want {
			t.Errorf("%s: %v, crypto/rsa says %v", tc.name, got, want)
		}
	}
}

// FuzzRSAVerify: for any signature bytes, the prepared key and crypto/rsa
// agree.
func FuzzRSAVerify(f *testing.F) {
	key, prep := preparedTestKey(f)
	d := sha256.Sum256([]byte("x"))
	sig, _ := rsa.SignPKCS1v15(nil, key, crypto.SHA256, d[:])
	f.Add(sig, d[:])
	f.Fuzz(func(t *testing.T, sig, digest []byte) {
		want := rsa.VerifyPKCS1v15(&key.PublicKey, crypto.SHA256, digest, sig) == nil
		if got := prep.verifyPKCS1v15(crypto.SHA256, digest, sig); got != want {
			t.Fatalf("prepared key says %v, crypto/rsa %v", got, want)
		}
	})
}

// BenchmarkRSAVerify compares one RSA-2048 verification with the prepared
// key and with crypto/rsa, which sets the modulus up every time.
func BenchmarkRSAVerify(b *testing.B) {
	key, prep := preparedTestKey(b)
	d := sha256.Sum256([]byte("x"))
	sig, _ := rsa.SignPKCS1v15(nil, key, crypto.SHA256, d[:])
	b.Run("prepared", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			prep.verifyPKCS1v15(crypto.SHA256, d[:], sig)
		}
	})
	b.Run("crypto-rsa", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			rsa.VerifyPKCS1v15(&key.PublicKey, crypto.SHA256, d[:], sig)
		}
	})
}

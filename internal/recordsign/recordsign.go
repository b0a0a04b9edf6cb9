// Package recordsign signs and verifies Kafka records with HMAC-SHA256,
// so that a consumer can tell a record a trusted service wrote from one
// anybody with write access to the topic forged.
//
// A signature covers a canonical byte string of the record: a version
// tag, then the record's kind, the key id, the signing time (as written
// in its header), the record key and the exact value bytes, each
// preceded by its length, so no two different records share a canonical
// string. It travels in three headers: HeaderSignature ("v1=" and 64
// lowercase hex digits), HeaderKeyID and HeaderTime (Unix seconds).
//
// Invariant: Verify accepts a record only if a key of the keyring, named
// by the record's key id, made an HMAC of exactly that kind, key id,
// time, key and value; changing any of them, or any byte of the
// signature headers, makes it refuse the record (TestVerify).
package recordsign

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/usagemeter/metering/internal/record"
)

// Header names of a signed record.
const (
	// HeaderSignature holds "v1=" and the HMAC-SHA256 in lowercase hex.
	HeaderSignature = "signature"
	// HeaderKeyID names the key that made the signature.
	HeaderKeyID = "signature-key"
	// HeaderTime is when the record was signed, in Unix seconds.
	HeaderTime = "signature-time"
)

// MinSecretBytes is the shortest secret a key may have: 32 bytes, the
// size of an HMAC-SHA256 output.
const MinSecretBytes = 32

const (
	// scheme starts the signature header's value.
	scheme = "v1="
	// domain starts every canonical string: a signature made for another
	// purpose or version never verifies here.
	domain = "usagemeter record signature v1\n"
)

// Errors of Verify; each is wrapped with detail.
var (
	// ErrUnsigned: the record has none of the signature headers.
	ErrUnsigned = errors.New("not signed")
	// ErrMalformed: a signature header is missing, repeated or not of
	// its form.
	ErrMalformed = errors.New("malformed signature headers")
	// ErrUnknownKey: the key id names no key of the keyring.
	ErrUnknownKey = errors.New("unknown signing key")
	// ErrBadSignature: the signature is not the one the named key makes.
	ErrBadSignature = errors.New("signature does not match")
	// ErrNoKeys: the keyring is empty; nothing can be verified.
	ErrNoKeys = errors.New("no signing keys configured")
)

// Key is one signing key: an id, written in every record it signs, and
// the secret.
type Key struct {
	ID     string
	Secret []byte
}

// keyID is the form of a key id.
var keyID = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// timeHeader is the form of HeaderTime's value.
var timeHeader = regexp.MustCompile(`^(0|[1-9][0-9]{0,18})$`)

// Keyring holds signing keys: the first signs, every one verifies, so a
// key is rotated by putting a new one first and keeping the old one
// after it as long as records it signed may be read. The zero Keyring,
// and a nil one, hold no key.
type Keyring struct {
	keys []Key
}

// NewKeyring returns a keyring of keys, the first signing. Ids must be
// 1-64 characters of A-Z a-z 0-9 . _ -, unique, and secrets at least
// MinSecretBytes long. Errors name a key by id, never its secret.
func NewKeyring(keys ...Key) (*Keyring, error) {
	seen := map[string]bool{}
	out := make([]Key, 0, len(keys))
	for i, k := range keys {
		if !keyID.MatchString(k.ID) {
			return nil, fmt.Errorf("key %d: id %q: want 1-64 characters of A-Z a-z 0-9 . _ -", i+1, k.ID)
		}
		if seen[k.ID] {
			return nil, fmt.Errorf("key id %q appears twice", k.ID)
		}
		seen[k.ID] = true
		if len(k.Secret) < MinSecretBytes {
			return nil, fmt.Errorf("key %q: the secret has %d bytes, want at least %d", k.ID, len(k.Secret), MinSecretBytes)
		}
		out = append(out, Key{ID: k.ID, Secret: append([]byte(nil), k.Secret...)})
	}
	return &Keyring{keys: out}, nil
}

// ParseKeys reads "id=secret,id=secret,...": the first key signs, all
// verify. Spaces around entries are ignored; a secret is the text after
// the first "=", used as bytes. An empty text is an empty keyring.
func ParseKeys(s string) (*Keyring, error) {
	var keys []Key
	for entry := range strings.SplitSeq(s, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		id, secret, ok := strings.Cut(entry, "=")
		if !ok {
			return nil, fmt.Errorf("key %d: want id=secret", len(keys)+1)
		}
		keys = append(keys, Key{ID: strings.TrimSpace(id), Secret: []byte(secret)})
	}
	return NewKeyring(keys...)
}

// Len is the number of keys.
func (k *Keyring) Len() int {
	if k == nil {
		return 0
	}
	return len(k.keys)
}

// IDs are the key ids, the signing one first.
func (k *Keyring) IDs() []string {
	if k == nil {
		return nil
	}
	ids := make([]string, len(k.keys))
	for i, key := range k.keys {
		ids[i] = key.ID
	}
	return ids
}

// SigningKeyID is the id of the key Sign uses ("" when there is none).
func (k *Keyring) SigningKeyID() string {
	if k.Len() == 0 {
		return ""
	}
	return k.keys[0].ID
}

// Sign adds the signature headers to rec, a record of kind, signed with
// the first key at the time at. rec must not carry signature headers yet.
func (k *Keyring) Sign(rec *record.Record, kind string, at time.Time) error {
	if k.Len() == 0 {
		return ErrNoKeys
	}
	for _, h := range rec.Headers {
		if isSignatureHeader(h.Key) {
			return fmt.Errorf("record already has a %s header", h.Key)
		}
	}
	key := k.keys[0]
	ts := []byte(strconv.FormatInt(at.Unix(), 10))
	mac := sum(key.Secret, kind, key.ID, ts, rec.Key, rec.Value)
	rec.Headers = append(rec.Headers,
		record.Header{Key: HeaderSignature, Value: []byte(scheme + hex.EncodeToString(mac))},
		record.Header{Key: HeaderKeyID, Value: []byte(key.ID)},
		record.Header{Key: HeaderTime, Value: ts},
	)
	return nil
}

// Signature is what Verify learnt of a valid signature.
type Signature struct {
	KeyID    string
	SignedAt time.Time
}

// Verify checks that rec, a record of kind, carries a valid signature of
// one of the keyring's keys. Each signature header must appear exactly
// once. The time is checked for form only: records are read again long
// after they were signed (rebuilds, replays), and what a record changes
// is deduplicated by its own id.
func (k *Keyring) Verify(rec record.Record, kind string) (Signature, error) {
	var sig, id, ts []byte
	var count [3]int
	for _, h := range rec.Headers {
		switch h.Key {
		case HeaderSignature:
			sig = h.Value
			count[0]++
		case HeaderKeyID:
			id = h.Value
			count[1]++
		case HeaderTime:
			ts = h.Value
			count[2]++
		}
	}
	switch {
	case count == [3]int{}:
		return Signature{}, ErrUnsigned
	case count != [3]int{1, 1, 1}:
		return Signature{}, fmt.Errorf("%w: want one each of %s, %s and %s", ErrMalformed, HeaderSignature, HeaderKeyID, HeaderTime)
	case !keyID.Match(id):
		return Signature{}, fmt.Errorf("%w: %s is not a key id", ErrMalformed, HeaderKeyID)
	case !timeHeader.Match(ts):
		return Signature{}, fmt.Errorf("%w: %s is not Unix seconds", ErrMalformed, HeaderTime)
	}
	got, ok := decodeSignature(sig)
	if !ok {
		return Signature{}, fmt.Errorf("%w: %s is not %s and 64 lowercase hex digits", ErrMalformed, HeaderSignature, scheme)
	}
	if k.Len() == 0 {
		return Signature{}, ErrNoKeys
	}
	for _, key := range k.keys {
		if key.ID != string(id) {
			continue
		}
		if !hmac.Equal(got, sum(key.Secret, kind, key.ID, ts, rec.Key, rec.Value)) {
			return Signature{}, fmt.Errorf("%w (key %q)", ErrBadSignature, key.ID)
		}
		secs, _ := strconv.ParseInt(string(ts), 10, 64)
		return Signature{KeyID: key.ID, SignedAt: time.Unix(secs, 0).UTC()}, nil
	}
	return Signature{}, fmt.Errorf("%w %q (this service knows %s)", ErrUnknownKey, id, strings.Join(k.IDs(), ", "))
}

// isSignatureHeader reports whether name is one of the signature headers.
func isSignatureHeader(name string) bool {
	return name == HeaderSignature || name == HeaderKeyID || name == HeaderTime
}

// SignatureHeaders are the names of the headers Sign adds.
func SignatureHeaders() []string { return []string{HeaderSignature, HeaderKeyID, HeaderTime} }

// decodeSignature reads "v1=<64 lowercase hex digits>".
func decodeSignature(v []byte) ([]byte, bool) {
	hexPart, ok := strings.CutPrefix(string(v), scheme)
	if !ok || len(hexPart) != 2*sha256.Size || strings.ToLower(hexPart) != hexPart {
		return nil, false
	}
	b, err := hex.DecodeString(hexPart)
	return b, err == nil
}

// Canonical is the byte string a signature covers: the domain tag, then
// kind, key id, time header, record key and value, each preceded by its
// length as 8 bytes big-endian.
func Canonical(kind, keyID string, ts, key, value []byte) []byte {
	n := len(domain) + 5*8 + len(kind) + len(keyID) + len(ts) + len(key) + len(value)
	out := make([]byte, 0, n)
	out = append(out, domain...)
	for _, f := range [][]byte{[]byte(kind), []byte(keyID), ts, key, value} {
		out = binary.BigEndian.AppendUint64(out, uint64(len(f)))
		out = append(out, f...)
	}
	return out
}

// sum is the HMAC-SHA256 of the canonical string under secret.
func sum(secret []byte, kind, keyID string, ts, key, value []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write(Canonical(kind, keyID, ts, key, value))
	return m.Sum(nil)
}

// Policy is what a consumer accepts: records signed by a key of Keys and,
// when AllowUnsigned is set (development only), records with no
// signature headers at all. A record that carries a signature is always
// verified.
type Policy struct {
	Keys          *Keyring
	AllowUnsigned bool
}

// Check returns nil when p accepts rec, a record of kind, and otherwise
// why not.
func (p Policy) Check(rec record.Record, kind string) error {
	_, err := p.Keys.Verify(rec, kind)
	if errors.Is(err, ErrUnsigned) && p.AllowUnsigned {
		return nil
	}
	return err
}

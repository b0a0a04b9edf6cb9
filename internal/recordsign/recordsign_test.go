package recordsign_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/record"
	"github.com/usagemeter/metering/internal/recordsign"
)

const kind = "adjustment"

var (
	secretOld = strings.Repeat("o", 32)
	secretNew = strings.Repeat("n", 40)
	at        = time.Date(2026, 11, 21, 19, 0, 0, 0, time.UTC)
)

func mustKeys(t *testing.T, s string) *recordsign.Keyring {
	t.Helper()
	k, err := recordsign.ParseKeys(s)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func signed(t *testing.T, k *recordsign.Keyring) record.Record {
	t.Helper()
	rec := record.Record{Key: []byte("acme"), Value: []byte(`{"id":"a","amount":-5}`),
		Headers: []record.Header{{Key: "kind", Value: []byte(kind)}}}
	if err := k.Sign(&rec, kind, at); err != nil {
		t.Fatal(err)
	}
	return rec
}

// header returns a copy of rec's headers with name's value set to v
// (drop removes it; dup adds a second one).
func withHeader(rec record.Record, name string, v []byte, mode string) record.Record {
	out := rec
	out.Headers = nil
	for _, h := range rec.Headers {
		if h.Key == name {
			switch mode {
			case "drop":
				continue
			case "dup":
				out.Headers = append(out.Headers, h)
			default:
				h.Value = v
			}
		}
		out.Headers = append(out.Headers, h)
	}
	return out
}

func TestVerify(t *testing.T) {
	t.Parallel()
	oldOnly := mustKeys(t, "k1="+secretOld)
	rotated := mustKeys(t, "k2="+secretNew+", k1="+secretOld)
	other := mustKeys(t, "k9="+strings.Repeat("x", 32))
	wrongSecret := mustKeys(t, "k1="+strings.Repeat("w", 32))
	base := signed(t, oldOnly)
	sigOf := func(rec record.Record) []byte {
		for _, h := range rec.Headers {
			if h.Key == recordsign.HeaderSignature {
				return h.Value
			}
		}
		return nil
	}
	flipped := bytes.Clone(sigOf(base))
	if flipped[10] == 'a' {
		flipped[10] = 'b'
	} else {
		flipped[10] = 'a'
	}
	cases := []struct {
		name string
		keys *recordsign.Keyring
		rec  record.Record
		kind string
		want error // nil: accepted
	}{
		{"signed, same key", oldOnly, base, kind, nil},
		{"rotation: the old key still verifies", rotated, base, kind, nil},
		{"rotation: the new key signs and verifies", rotated, signed(t, rotated), kind, nil},
		{"new key unknown to an old keyring", oldOnly, signed(t, rotated), kind, recordsign.ErrUnknownKey},
		{"unknown key id", other, base, kind, recordsign.ErrUnknownKey},
		{"same id, another secret", wrongSecret, base, kind, recordsign.ErrBadSignature},
		{"tampered value", oldOnly, func() record.Record { r := base; r.Value = []byte(`{"id":"a","amount":-50}`); return r }(), kind, recordsign.ErrBadSignature},
		{"value with a byte added", oldOnly, func() record.Record { r := base; r.Value = append(bytes.Clone(r.Value), ' '); return r }(), kind, recordsign.ErrBadSignature},
		{"tampered key (tenant)", oldOnly, func() record.Record { r := base; r.Key = []byte("globex"); return r }(), kind, recordsign.ErrBadSignature},
		{"key and value boundary moved", oldOnly, func() record.Record {
			r := base
			r.Key, r.Value = []byte("acme{"), r.Value[1:]
			return r
		}(), kind, recordsign.ErrBadSignature},
		{"another kind", oldOnly, base, "event", recordsign.ErrBadSignature},
		{"tampered time", oldOnly, withHeader(base, recordsign.HeaderTime, []byte("1"), ""), kind, recordsign.ErrBadSignature},
		{"tampered key id", rotated, withHeader(base, recordsign.HeaderKeyID, []byte("k2"), ""), kind, recordsign.ErrBadSignature},
		{"tampered signature", oldOnly, withHeader(base, recordsign.HeaderSignature, flipped, ""), kind, recordsign.ErrBadSignature},
		{"uppercase hex", oldOnly, withHeader(base, recordsign.HeaderSignature, bytes.ToUpper(sigOf(base)), ""), kind, recordsign.ErrMalformed},
		{"another scheme", oldOnly, withHeader(base, recordsign.HeaderSignature, append([]byte("v2="), sigOf(base)[3:]...), ""), kind, recordsign.ErrMalformed},
		{"short signature", oldOnly, withHeader(base, recordsign.HeaderSignature, sigOf(base)[:20], ""), kind, recordsign.ErrMalformed},
		{"time not a number", oldOnly, withHeader(base, recordsign.HeaderTime, []byte("-1"), ""), kind, recordsign.ErrMalformed},
		{"key id with a NUL", oldOnly, withHeader(base, recordsign.HeaderKeyID, []byte("k1\x00"), ""), kind, recordsign.ErrMalformed},
		{"signature header missing", oldOnly, withHeader(base, recordsign.HeaderSignature, nil, "drop"), kind, recordsign.ErrMalformed},
		{"key id header missing", oldOnly, withHeader(base, recordsign.HeaderKeyID, nil, "drop"), kind, recordsign.ErrMalformed},
		{"signature header twice", oldOnly, withHeader(base, recordsign.HeaderSignature, nil, "dup"), kind, recordsign.ErrMalformed},
		{"unsigned", oldOnly, record.Record{Key: []byte("acme"), Value: []byte(`{}`)}, kind, recordsign.ErrUnsigned},
		{"no keys", nil, base, kind, recordsign.ErrNoKeys},
		{"empty keyring", mustKeys(t, ""), base, kind, recordsign.ErrNoKeys},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			sig, err := c.keys.Verify(c.rec, c.kind)
			if c.want == nil {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if !sig.SignedAt.Equal(at) {
					t.Errorf("signed at %s, want %s", sig.SignedAt, at)
				}
				return
			}
			if !errors.Is(err, c.want) {
				t.Fatalf("error %v, want %v", err, c.want)
			}
		})
	}
}

func TestSignUsesTheFirstKeyAndRefusesTwice(t *testing.T) {
	t.Parallel()
	k := mustKeys(t, "k2="+secretNew+",k1="+secretOld)
	rec := signed(t, k)
	sig, err := k.Verify(rec, kind)
	if err != nil || sig.KeyID != "k2" || k.SigningKeyID() != "k2" {
		t.Fatalf("signed by %q (%v), want k2", sig.KeyID, err)
	}
	if err := k.Sign(&rec, kind, at); err == nil {
		t.Error("a record signed twice")
	}
	var none *recordsign.Keyring
	if err := none.Sign(&rec, kind, at); !errors.Is(err, recordsign.ErrNoKeys) {
		t.Errorf("signing without keys: %v", err)
	}
}

func TestParseKeys(t *testing.T) {
	t.Parallel()
	cases := []struct {
		in   string
		ids  []string
		fail string
	}{
		{"", nil, ""},
		{" k1=" + secretOld + " ", []string{"k1"}, ""},
		{"k2=" + secretNew + ",k1=" + secretOld, []string{"k2", "k1"}, ""},
		{"k1=" + secretOld + "==", []string{"k1"}, ""}, // a secret may hold "="
		{"k1=" + secretOld + ",k1=" + secretNew, nil, "twice"},
		{"k1=short", nil, "at least 32"},
		{"k1", nil, "id=secret"},
		{"bad id!=" + secretOld, nil, "id"},
		{"=" + secretOld, nil, "id"},
	}
	for _, c := range cases {
		k, err := recordsign.ParseKeys(c.in)
		if c.fail != "" {
			if err == nil || !strings.Contains(err.Error(), c.fail) {
				t.Errorf("%q: error %v, want one saying %q", c.in, err, c.fail)
			}
			if err != nil && (strings.Contains(err.Error(), secretOld) || strings.Contains(err.Error(), "short")) {
				t.Errorf("%q: the error shows a secret: %v", c.in, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", c.in, err)
			continue
		}
		if got := strings.Join(k.IDs(), ","); got != strings.Join(c.ids, ",") {
			t.Errorf("%q: ids %q, want %q", c.in, got, c.ids)
		}
	}
}

func TestPolicy(t *testing.T) {
	t.Parallel()
	k := mustKeys(t, "k1="+secretOld)
	unsigned := record.Record{Key: []byte("acme"), Value: []byte(`{}`)}
	forged := withHeader(signed(t, k), recordsign.HeaderTime, []byte("2"), "")
	cases := []struct {
		name string
		p    recordsign.Policy
		rec  record.Record
		ok   bool
	}{
		{"signed", recordsign.Policy{Keys: k}, signed(t, k), true},
		{"unsigned refused", recordsign.Policy{Keys: k}, unsigned, false},
		{"unsigned refused without keys", recordsign.Policy{}, unsigned, false},
		{"unsigned allowed in development", recordsign.Policy{AllowUnsigned: true}, unsigned, true},
		{"a bad signature is refused even when unsigned ones are allowed", recordsign.Policy{Keys: k, AllowUnsigned: true}, forged, false},
		{"a signature is refused without keys even when unsigned ones are allowed", recordsign.Policy{AllowUnsigned: true}, signed(t, k), false},
	}
	for _, c := range cases {
		if err := c.p.Check(c.rec, kind); (err == nil) != c.ok {
			t.Errorf("%s: %v", c.name, err)
		}
	}
}

// BenchmarkVerify: the cost the aggregator adds to each adjustment record
// (a value of about 200 bytes, the key found second in a rotating ring).
func BenchmarkVerify(b *testing.B) {
	k, err := recordsign.ParseKeys("k2=" + secretNew + ",k1=" + secretOld)
	if err != nil {
		b.Fatal(err)
	}
	old, err := recordsign.ParseKeys("k1=" + secretOld)
	if err != nil {
		b.Fatal(err)
	}
	rec := record.Record{Key: []byte("acme"), Value: bytes.Repeat([]byte("v"), 200)}
	if err := old.Sign(&rec, kind, at); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := k.Verify(rec, kind); err != nil {
			b.Fatal(err)
		}
	}
}

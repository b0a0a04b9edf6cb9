package stripewebhook

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgconn"
)

// event is the part of a Stripe event envelope we read.
type event struct {
	// ID is Stripe's event id, or "sha256:<hex of the payload>" when the
	// payload has no usable id, so that even such a payload is recorded once.
	ID      string
	Type    string
	Created time.Time // zero when absent
	// Object is data.object, raw (nil when absent).
	Object json.RawMessage
	// Previous is data.previous_attributes, raw (nil when absent): the
	// previous values of what an *.updated event changed.
	Previous json.RawMessage
	// ObjectID and ObjectType name the object the event is ordered on,
	// once known (only subscriptions are ordered).
	ObjectID, ObjectType string
}

// contentError says why a signed event cannot take effect because of what
// it holds: it is acknowledged and recorded, never retried.
type contentError struct{ reason string }

func (e *contentError) Error() string { return e.reason }

func undecodable(format string, args ...any) error {
	return &contentError{reason: fmt.Sprintf(format, args...)}
}

// stripeID is the shape of Stripe's ids (evt_..., sub_..., cus_..., in_...).
var stripeID = regexp.MustCompile(`^[A-Za-z0-9_]{1,255}$`)

// decodeEvent reads the envelope. On error (a *contentError) ev still
// holds what could be read, and an id to record it under.
func decodeEvent(payload []byte) (event, error) {
	sum := sha256.Sum256(payload)
	ev := event{ID: "sha256:" + hex.EncodeToString(sum[:])}
	var env map[string]json.RawMessage
	if err := json.Unmarshal(payload, &env); err != nil {
		return ev, undecodable("the payload is not a JSON object: %v", err)
	}
	var problems []string
	var id string
	if err := json.Unmarshal(env["id"], &id); err != nil || !stripeID.MatchString(id) {
		problems = append(problems, fmt.Sprintf("id %s is not a Stripe event id", clip(env["id"])))
	} else {
		ev.ID = id
	}
	if err := json.Unmarshal(env["type"], &ev.Type); err != nil || ev.Type == "" {
		ev.Type = ""
		problems = append(problems, fmt.Sprintf("type %s is not a string", clip(env["type"])))
	}
	var created int64
	if err := json.Unmarshal(env["created"], &created); err != nil || created <= 0 {
		problems = append(problems, fmt.Sprintf("created %s is not a Unix time", clip(env["created"])))
	} else {
		ev.Created = time.Unix(created, 0).UTC()
	}
	if raw, ok := env["data"]; ok {
		var data struct {
			Object   json.RawMessage `json:"object"`
			Previous json.RawMessage `json:"previous_attributes"`
		}
		if err := json.Unmarshal(raw, &data); err != nil {
			problems = append(problems, fmt.Sprintf("data is not an object: %v", err))
		}
		if len(data.Object) > 0 && string(data.Object) != "null" {
			ev.Object = data.Object
		}
		if len(data.Previous) > 0 && string(data.Previous) != "null" {
			ev.Previous = data.Previous
		}
	}
	if len(problems) > 0 {
		return ev, undecodable("%s", strings.Join(problems, "; "))
	}
	return ev, nil
}

// decodeObject decodes ev's data.object into v.
func decodeObject(ev event, v any) error {
	if ev.Object == nil {
		return undecodable("%s without data.object", ev.Type)
	}
	if err := json.Unmarshal(ev.Object, v); err != nil {
		return undecodable("decoding the %s object: %v", ev.Type, err)
	}
	return nil
}

// contentOrFailure turns a Postgres error the event's data caused (a NUL
// in a string, a value out of range, a constraint) into a contentError;
// anything else (connection lost, timeouts, a closed pool) stays a
// failure of ours, answered 5xx so Stripe retries.
func contentOrFailure(err error, what string) error {
	if err == nil {
		return nil
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code[:2] {
		case "22", "23", "54":
			return undecodable("%s: Postgres refused the event's data: %s (SQLSTATE %s)", what, pgErr.Message, pgErr.Code)
		}
	}
	return fmt.Errorf("%s: %w", what, err)
}

// clip shows at most 64 bytes of a raw JSON value in a reason.
func clip(raw json.RawMessage) string {
	if raw == nil {
		return "(absent)"
	}
	s := string(raw)
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	return fmt.Sprintf("%q", s)
}

// printable makes s storable in a text column: valid UTF-8, no NUL, at
// most n bytes.
func printable(s string, n int) string {
	s = strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
	for len(s) > n {
		_, size := utf8.DecodeLastRuneInString(s)
		s = s[:len(s)-size]
	}
	return s
}

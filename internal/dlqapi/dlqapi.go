// Package dlqapi holds what the dead-letter HTTP routes of ingest (the
// usage queue) and the biller (the billing queue) share: the body of a
// replay or discard, and the actor recorded for a key.
//
// Invariant: a replay or discard request is accepted only with a note of
// 1 to MaxNote characters that is not blank, so every action taken over
// HTTP reaches the audit trail with a reason and the key that took it.
package dlqapi

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/usagemeter/metering/internal/httpjson"
)

// MaxNote is the longest note accepted, in characters.
const MaxNote = 1000

// bodyLimit bounds the body of a replay or discard.
const bodyLimit = 8 << 10

// Action is the body of POST .../replay and .../discard.
type Action struct {
	// Note says why, for the audit trail; required.
	Note string `json:"note"`
}

// DecodeAction reads the body of a replay or discard and answers 400 (or
// 415 for an encoded body) and returns false when it is not an Action
// with a note.
func DecodeAction(w http.ResponseWriter, r *http.Request) (Action, bool) {
	var a Action
	if err := httpjson.Decode(r, bodyLimit, &a); err != nil {
		if errors.Is(err, httpjson.ErrEncoding) {
			httpjson.Error(w, http.StatusUnsupportedMediaType, "unsupported_encoding", err.Error())
			return Action{}, false
		}
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", err.Error()+`; send {"note": "why"}`)
		return Action{}, false
	}
	if err := CheckNote(a.Note); err != nil {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", err.Error())
		return Action{}, false
	}
	a.Note = strings.TrimSpace(a.Note)
	return a, true
}

// CheckNote says what is wrong with note, or nil.
func CheckNote(note string) error {
	switch n := utf8.RuneCountInString(note); {
	case strings.TrimSpace(note) == "":
		return errors.New(`a note is required: {"note": "why"}; it goes to the audit trail`)
	case n > MaxNote:
		return fmt.Errorf("the note is %d characters; at most %d", n, MaxNote)
	case strings.ContainsRune(note, 0):
		return errors.New("the note must not hold NUL")
	}
	return nil
}

// Actor is the audit trail's name for the key keyID: "key:" and its id.
func Actor(keyID string) string { return "key:" + keyID }

// ParseID reads the path value "id", a positive integer, and answers 400
// and returns false when it is not one.
func ParseID(w http.ResponseWriter, r *http.Request) (int64, bool) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		httpjson.Errorf(w, http.StatusBadRequest, "invalid_request", "the dead letter id must be a positive integer, got %q", r.PathValue("id"))
		return 0, false
	}
	return id, true
}

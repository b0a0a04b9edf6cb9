package ingest_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestBadInputCatalogue sends malformed requests of every kind and checks
// each one's exact status and error body; in the end the topic must be
// empty: not one of them published anything.
func TestBadInputCatalogue(t *testing.T) {
	e := newEnv(t, envOpts{maxBody: 256 << 10})
	_, acme := e.createKey(`{"tenant":"acme"}`)
	_, viewer := e.createKey(`{"role":"viewer"}`)
	revokedID, revoked := e.createKey(`{"tenant":"acme"}`)
	e.do("DELETE", "/v1/admin/keys/"+revokedID, adminKey, "", "")

	now := time.Now().UTC()
	ts := func(d time.Duration) string { return now.Add(d).Format(time.RFC3339Nano) }
	// ev builds an event object from field overrides; a nil value drops the field.
	ev := func(over map[string]any) string {
		fields := map[string]any{"id": "c1", "tenant": "acme", "metric": "api_calls", "value": 1, "time": ts(0)}
		for k, v := range over {
			fields[k] = v
		}
		var parts []string
		for _, k := range []string{"id", "tenant", "metric", "value", "time", "source", "properties", "extra"} {
			v, ok := fields[k]
			if !ok || v == nil {
				continue
			}
			switch x := v.(type) {
			case string:
				parts = append(parts, fmt.Sprintf("%q:%q", k, x))
			case raw:
				parts = append(parts, fmt.Sprintf("%q:%s", k, string(x)))
			default:
				parts = append(parts, fmt.Sprintf("%q:%v", k, x))
			}
		}
		return "{" + strings.Join(parts, ",") + "}"
	}
	manyProps := map[string]string{}
	for i := range 33 {
		manyProps[fmt.Sprint("k", i)] = "v"
	}
	var props []string
	for k, v := range manyProps {
		props = append(props, fmt.Sprintf("%q:%q", k, v))
	}
	tooMany := "[" + strings.TrimSuffix(strings.Repeat(ev(nil)+",", 1001), ",") + "]"
	huge := strings.Repeat(" ", 300<<10) + ev(nil)

	tests := []struct {
		name, key, contentType, body string
		status                       int
		code                         string // error.code, or "fields" for an errors list
		fields                       string // "index:field ..." for 400 event errors
	}{
		{"value is a string", acme, "", ev(map[string]any{"value": "1"}), 400, "fields", "0:value"},
		{"tenant is a number", acme, "", ev(map[string]any{"tenant": raw("7")}), 400, "fields", "0:tenant"},
		{"id missing", acme, "", ev(map[string]any{"id": nil}), 400, "fields", "0:id"},
		{"id of 129 characters", acme, "", ev(map[string]any{"id": strings.Repeat("x", 129)}), 400, "fields", "0:id"},
		{"id not printable ASCII", acme, "", ev(map[string]any{"id": "tab\there"}), 400, "fields", "0:id"},
		{"tenant with a space", acme, "", ev(map[string]any{"tenant": "ac me"}), 400, "fields", "0:tenant"},
		{"metric of 129 characters", acme, "", ev(map[string]any{"metric": strings.Repeat("m", 129)}), 400, "fields", "0:metric"},
		{"negative value", acme, "", ev(map[string]any{"value": raw("-5")}), 400, "fields", "0:value"},
		{"fractional value", acme, "", ev(map[string]any{"value": raw("1.5")}), 400, "fields", "0:value"},
		{"exponent value", acme, "", ev(map[string]any{"value": raw("1e3")}), 400, "fields", "0:value"},
		{"value 2^53 + 1", acme, "", ev(map[string]any{"value": raw("9007199254740993")}), 400, "fields", "0:value"},
		{"value beyond any integer", acme, "", ev(map[string]any{"value": raw(strings.Repeat("9", 400))}), 400, "fields", "0:value"},
		{"value null", acme, "", ev(map[string]any{"value": raw("null")}), 400, "fields", "0:value"},
		{"time an hour ahead", acme, "", ev(map[string]any{"time": ts(time.Hour)}), 400, "fields", "0:time"},
		{"time 40 days old", acme, "", ev(map[string]any{"time": ts(-40 * 24 * time.Hour)}), 400, "fields", "0:time"},
		{"time not RFC 3339", acme, "", ev(map[string]any{"time": "21/11/2026 19:00"}), 400, "fields", "0:time"},
		{"time missing", acme, "", ev(map[string]any{"time": nil}), 400, "fields", "0:time"},
		{"33 properties", acme, "", ev(map[string]any{"properties": raw("{" + strings.Join(props, ",") + "}")}), 400, "fields", "0:properties"},
		{"property not a string", acme, "", ev(map[string]any{"properties": raw(`{"k":1}`)}), 400, "fields", "0:properties.k"},
		{"unknown field", acme, "", ev(map[string]any{"extra": "x"}), 400, "fields", "0:extra"},
		{"duplicate JSON key", acme, "", strings.Replace(ev(nil), `"value":1`, `"value":1,"value":900`, 1), 400, "fields", "0:value"},
		{"every field wrong", acme, "", `{"id":"","tenant":"","metric":"","value":-1,"time":""}`, 400, "fields", "0:value 0:id 0:tenant 0:metric 0:time"},
		{"one bad event among good ones", acme, "", "[" + ev(nil) + "," + ev(map[string]any{"id": "c2", "value": raw("2.5")}) + "," + ev(map[string]any{"id": "c3"}) + "]", 400, "fields", "1:value"},
		{"bad NDJSON line", acme, "application/x-ndjson", ev(nil) + "\n" + ev(map[string]any{"id": "c2", "metric": "a b"}), 400, "fields", "1:metric"},
		{"CloudEvent of spec 0.3", acme, "application/cloudevents+json", `{"specversion":"0.3","id":"c1","source":"s","type":"api_calls","subject":"acme","time":"` + ts(0) + `","data":{"value":1}}`, 400, "fields", "0:specversion"},
		{"CloudEvent with data_base64", acme, "application/cloudevents+json", `{"specversion":"1.0","id":"c1","source":"s","type":"api_calls","subject":"acme","time":"` + ts(0) + `","data_base64":"AQ=="}`, 400, "fields", "0:data_base64 0:data"},
		{"array element not an object", acme, "", "[" + ev(nil) + ",[1]]", 400, "fields", "1:"},
		{"invalid UTF-8", acme, "", strings.Replace(ev(nil), "api_calls", "api_\xff", 1), 400, "invalid_utf8", ""},
		{"empty body", acme, "", "", 400, "empty_batch", ""},
		{"whitespace body", acme, "", " \n\t ", 400, "empty_batch", ""},
		{"empty array", acme, "", "[]", 400, "empty_batch", ""},
		{"not JSON", acme, "", "value=1", 400, "malformed_body", ""},
		{"JSON null", acme, "", "null", 400, "malformed_body", ""},
		{"JSON string", acme, "", `"event"`, 400, "malformed_body", ""},
		{"truncated JSON", acme, "", ev(nil)[:30], 400, "malformed_body", ""},
		{"trailing garbage", acme, "", ev(nil) + " x", 400, "malformed_body", ""},
		{"1001 events", acme, "", tooMany, 413, "batch_too_large", ""},
		{"body over the limit", acme, "", huge, 413, "payload_too_large", ""},
		{"text/plain", acme, "text/plain", ev(nil), 415, "unsupported_media_type", ""},
		{"form content type (curl's default)", acme, "application/x-www-form-urlencoded", ev(nil), 415, "unsupported_media_type", ""},
		{"XML", acme, "application/xml", "<event/>", 415, "unsupported_media_type", ""},
		{"no key", "", "", ev(nil), 401, "unauthorized", ""},
		{"unknown key", "mk_not_a_key", "", ev(nil), 401, "unauthorized", ""},
		{"revoked key", revoked, "", ev(nil), 401, "unauthorized", ""},
		{"another tenant's events", acme, "", ev(map[string]any{"tenant": "globex"}), 403, "forbidden", ""},
		{"viewer key writing", viewer, "", ev(nil), 403, "forbidden", ""},
	}
	if len(tests) < 30 {
		t.Fatalf("the catalogue has %d cases; keep at least 30", len(tests))
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.do("POST", "/v1/events", tt.key, tt.contentType, tt.body)
			if r.status != tt.status {
				t.Fatalf("status %d, want %d: %s", r.status, tt.status, r.raw)
			}
			if tt.code == "fields" {
				var got []string
				list, _ := r.body["errors"].([]any)
				for _, x := range list {
					fe := x.(map[string]any)
					if msg, _ := fe["message"].(string); msg == "" {
						t.Errorf("a field error without a message: %v", fe)
					}
					got = append(got, fmt.Sprintf("%v:%v", fe["index"], fe["field"]))
				}
				if strings.Join(got, " ") != tt.fields {
					t.Fatalf("errors %v, want %s (%s)", got, tt.fields, r.raw)
				}
				return
			}
			if errorCode(r) != tt.code {
				t.Fatalf("error code %q, want %q: %s", errorCode(r), tt.code, r.raw)
			}
			if tt.status == http.StatusUnauthorized && r.header.Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
		})
	}
	if msgs := e.published(); len(msgs) != 0 {
		t.Fatalf("%d messages published by rejected requests", len(msgs))
	}
}

// raw is a JSON fragment inserted as is.
type raw string

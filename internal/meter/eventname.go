package meter

import (
	"fmt"
	"strings"
)

// MaxStripeEventName is the longest Stripe meter event name.
const MaxStripeEventName = 100

// stripeNameByte reports whether c may appear in a Stripe meter event name
// as the biller sends it: A-Z a-z 0-9 . _ : -.
func stripeNameByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == ':' || c == '-'
}

// EventNamePlaceholders parses a quota's Stripe event name template: text
// of A-Z a-z 0-9 . _ : - with {property} placeholders. It returns the
// placeholders' property names in order of first appearance, without
// repeats; a name without placeholders gives none.
func EventNamePlaceholders(tmpl string) ([]string, error) {
	if tmpl == "" {
		return nil, fmt.Errorf("a Stripe event name is not empty")
	}
	var names []string
	for rest := tmpl; rest != ""; {
		switch c := rest[0]; {
		case c == '{':
			name, after, ok := strings.Cut(rest[1:], "}")
			if !ok {
				return nil, fmt.Errorf("placeholder %q has no closing }", truncate(rest))
			}
			if name == "" || strings.ContainsRune(name, '{') {
				return nil, fmt.Errorf("placeholder {%s} must name one property", truncate(name))
			}
			if !contains(names, name) {
				names = append(names, name)
			}
			rest = after
		case stripeNameByte(c):
			rest = rest[1:]
		default:
			return nil, fmt.Errorf("%q may hold only A-Z a-z 0-9 . _ : - and {property} placeholders", truncate(tmpl))
		}
	}
	return names, nil
}

// EventName is the Stripe event name of group g under template tmpl: each
// {property} placeholder replaced by g's value of that property. It fails
// when tmpl is not a valid template, names a property g lacks (a missing
// value, shown as null, or one the meter does not group by), or when the
// result is not a valid Stripe event name (a value with other characters,
// or longer than MaxStripeEventName).
func (g Group) EventName(tmpl string) (string, error) {
	if _, err := EventNamePlaceholders(tmpl); err != nil {
		return "", err
	}
	var b strings.Builder
	for rest := tmpl; rest != ""; {
		i := strings.IndexByte(rest, '{')
		if i < 0 {
			b.WriteString(rest)
			break
		}
		b.WriteString(rest[:i])
		name, after, _ := strings.Cut(rest[i+1:], "}")
		rest = after
		at := -1
		for j := range g.names {
			if g.names[j] == name {
				at = j
				break
			}
		}
		if at < 0 {
			return "", fmt.Errorf("placeholder {%s}: the meter does not group by %q", truncate(name), truncate(name))
		}
		v, ok := g.Value(at)
		if !ok {
			return "", fmt.Errorf("placeholder {%s}: the group has no value of %q (null)", truncate(name), truncate(name))
		}
		for k := 0; k < len(v); k++ {
			if !stripeNameByte(v[k]) {
				return "", fmt.Errorf("placeholder {%s}: value %q has characters a Stripe event name cannot hold (only A-Z a-z 0-9 . _ : -)", truncate(name), truncate(v))
			}
		}
		b.WriteString(v)
	}
	if b.Len() > MaxStripeEventName {
		return "", fmt.Errorf("event name %q is longer than %d characters", truncate(b.String()), MaxStripeEventName)
	}
	return b.String(), nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// truncate shortens s for an error message.
func truncate(s string) string {
	if len(s) > 40 {
		return strings.ToValidUTF8(s[:40], "?") + "..."
	}
	return s
}

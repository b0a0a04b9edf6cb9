// Package apidoc embeds the OpenAPI 3.1 document of every HTTP route of
// the three services; each serves it at /openapi.yaml.
//
// Invariant: tests fail when a route the code serves is missing from the
// document, or when an example request in it is rejected by the code.
package apidoc

import _ "embed"

// OpenAPI is the document, YAML.
//
//go:embed openapi.yaml
var OpenAPI []byte

// Package apidoc embeds the OpenAPI 3.1 document of every HTTP route of
// the three services, and the AsyncAPI 3.0 document of the billing.events
// topic's messages; each service serves them at /openapi.yaml and
// /asyncapi.yaml.
//
// Invariant: tests fail when a route the code serves is missing from the
// OpenAPI document, when an example request in it is rejected by the
// code, or when a billing.events payload that internal/billingevents
// produces has a field the AsyncAPI document does not describe, lacks one
// it requires, or breaks its schema.
package apidoc

import _ "embed"

// OpenAPI is the document, YAML.
//
//go:embed openapi.yaml
var OpenAPI []byte

// AsyncAPI is the billing.events document, YAML. Its overage price refers
// to the OpenAPI document's Price schema, as openapi.yaml beside it.
//
//go:embed asyncapi.yaml
var AsyncAPI []byte

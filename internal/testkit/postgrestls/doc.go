// Package postgrestls proves that the services reach Postgres over
// verified TLS when DATABASE_URL asks for it: pgx reads sslmode,
// sslrootcert, sslcert and sslkey from the URL, and nothing between the
// environment and pgx (config, accounts.Open, migrate.OpenPool, the leader
// elector's copy of the pool's settings, rebuild's shadow pool, pgtest and
// the stack's URL rewriting, which change only the path) drops them. It
// holds only tests, which start a private Postgres cluster with ssl=on
// and certificates made by internal/testkit/testpki.
//
// Invariant: with sslmode=verify-full the product's own Open connects
// only to a server whose certificate chains to sslrootcert and names the
// host, the session is encrypted, and a client certificate in
// sslcert/sslkey is presented when the server requires one
// (TestVerifyFull).
//
// Test tooling, not product (see internal/testkit).
package postgrestls

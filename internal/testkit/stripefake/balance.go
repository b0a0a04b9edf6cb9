package stripefake

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// BalanceTransaction is a customer balance transaction the server
// accepted: Amount in the currency's minor unit, negative for a credit.
type BalanceTransaction struct {
	ID            string
	Customer      string
	Amount        int64
	Currency      string
	Description   string
	Metadata      map[string]string
	EndingBalance int64
	Created       int64
}

// balanceBook holds the customer balance transactions and balances.
type balanceBook struct {
	txns     []*BalanceTransaction
	balances map[string]int64
}

// book returns the server's balance book; s.mu must be held.
func (s *Server) book() *balanceBook {
	if s.balances == nil {
		s.balances = &balanceBook{balances: map[string]int64{}}
	}
	return s.balances
}

// createBalanceTransaction is POST /v1/customers/{customer}/balance_transactions:
// amount (a non-zero integer) and currency are required, a customer is
// any id starting with cus_ (or RejectCustomer refuses it); the
// Idempotency-Key replay of serve makes a retry return the first answer.
func (s *Server) createBalanceTransaction(w http.ResponseWriter, r *http.Request) {
	_ = r.ParseForm()
	f := r.PostForm
	customer := r.PathValue("customer")
	amount, err := strconv.ParseInt(f.Get("amount"), 10, 64)
	if err != nil || amount == 0 {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "parameter_invalid_integer", "amount must be a non-zero integer.")
		return
	}
	currency := f.Get("currency")
	if len(currency) != 3 || strings.ToLower(currency) != currency {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "parameter_missing", "Missing required param: currency (three lower-case letters).")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !strings.HasPrefix(customer, "cus_") || s.RejectCustomer != nil && s.RejectCustomer(customer) {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "resource_missing", "No such customer: '"+customer+"'")
		return
	}
	b := s.book()
	meta := map[string]string{}
	for k, vs := range f {
		if name, ok := strings.CutPrefix(k, "metadata["); ok && strings.HasSuffix(name, "]") && len(vs) > 0 {
			meta[strings.TrimSuffix(name, "]")] = vs[0]
		}
	}
	b.balances[customer] += amount
	t := &BalanceTransaction{ID: fmt.Sprintf("cbtxn_test_%06d", len(b.txns)+1), Customer: customer, Amount: amount, Currency: currency,
		Description: f.Get("description"), Metadata: meta, EndingBalance: b.balances[customer], Created: s.cfg.Now().Unix()}
	b.txns = append(b.txns, t)
	writeJSON(w, http.StatusOK, map[string]any{"id": t.ID, "object": "customer_balance_transaction", "amount": t.Amount,
		"created": t.Created, "credit_note": nil, "currency": t.Currency, "customer": customer, "description": t.Description,
		"ending_balance": t.EndingBalance, "invoice": nil, "livemode": false, "metadata": meta, "type": "adjustment"})
}

// BalanceTransactions returns a copy of every accepted balance transaction.
func (s *Server) BalanceTransactions() []BalanceTransaction {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []BalanceTransaction
	for _, t := range s.book().txns {
		out = append(out, *t)
	}
	return out
}

// Balance returns customer's balance (negative: credit the customer has).
func (s *Server) Balance(customer string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.book().balances[customer]
}

// listBalanceTransactions is GET /v1/customers/{customer}/balance_transactions:
// the customer's transactions, newest first, in one page.
func (s *Server) listBalanceTransactions(w http.ResponseWriter, r *http.Request) {
	customer := r.PathValue("customer")
	s.mu.Lock()
	defer s.mu.Unlock()
	data := []map[string]any{}
	txns := s.book().txns
	for i := len(txns) - 1; i >= 0; i-- {
		t := txns[i]
		if t.Customer != customer {
			continue
		}
		data = append(data, map[string]any{"id": t.ID, "object": "customer_balance_transaction", "amount": t.Amount,
			"created": t.Created, "currency": t.Currency, "customer": customer, "description": t.Description,
			"ending_balance": t.EndingBalance, "livemode": false, "metadata": t.Metadata, "type": "adjustment"})
	}
	writeJSON(w, http.StatusOK, map[string]any{"object": "list", "data": data, "has_more": false,
		"url": "/v1/customers/" + customer + "/balance_transactions"})
}

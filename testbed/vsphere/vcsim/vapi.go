package main

// vAPI JSON-RPC at POST /api, the protocol of the vmware-vcenter Python bindings, translated
// in-process onto vcsim's own tag store, which only speaks the legacy /rest/com/vmware/cis
// dialect (~action= queries, id: path prefixes, {"value": ...} bodies). Each JSON-RPC operation
// becomes one legacy request served by vcsim's handler; its answer is re-typed into vAPI's
// tagged JSON (STRUCTURE/OPTIONAL/SECRET/ERROR) so the bindings' deserializer accepts it.

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
)

const (
	restSession     = "/rest/com/vmware/cis/session"
	restCategory    = "/rest/com/vmware/cis/tagging/category"
	restTag         = "/rest/com/vmware/cis/tagging/tag"
	restAssociation = "/rest/com/vmware/cis/tagging/tag-association"
	sessionHeader   = "vmware-api-session-id"
)

type vapiBridge struct {
	next http.Handler  // vcsim's handler, which serves the legacy routes
	user *url.Userinfo // the credentials vcsim's SOAP login accepts
}

func newVapiBridge(next http.Handler, user *url.Userinfo) *vapiBridge {
	return &vapiBridge{next: next, user: user}
}

type rpcRequest struct {
	ID     json.RawMessage `json:"id"`
	Params struct {
		ServiceID   string          `json:"serviceId"`
		OperationID string          `json:"operationId"`
		Input       json.RawMessage `json:"input"`
		Ctx         struct {
			SecurityCtx map[string]interface{} `json:"securityCtx"`
		} `json:"ctx"`
	} `json:"params"`
}

// vapiError is a standard vAPI error, e.g. "not_found" for com.vmware.vapi.std.errors.not_found.
type vapiError struct{ name string }

func (e *vapiError) encode() interface{} {
	return map[string]interface{}{"ERROR": map[string]interface{}{
		"com.vmware.vapi.std.errors." + e.name: map[string]interface{}{
			"messages":   []interface{}{},
			"data":       map[string]interface{}{"OPTIONAL": nil},
			"error_type": map[string]interface{}{"OPTIONAL": strings.ToUpper(e.name)},
		},
	}}
}

// call is one JSON-RPC invocation being translated.
type call struct {
	bridge  *vapiBridge
	session string
	input   map[string]interface{}
}

func (v *vapiBridge) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var req rpcRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeJSON(w, http.StatusOK, map[string]interface{}{"jsonrpc": "2.0", "id": nil,
			"error": map[string]interface{}{"code": -32700, "message": "parse error: " + err.Error()}})
		return
	}
	var raw interface{}
	_ = json.Unmarshal(req.Params.Input, &raw)
	input, _ := unwrapVapi(raw).(map[string]interface{})
	sec := req.Params.Ctx.SecurityCtx
	c := &call{bridge: v, input: input}
	c.session, _ = sec["sessionId"].(string)

	var result map[string]interface{}
	op := operations[req.Params.ServiceID+"."+req.Params.OperationID]
	if req.Params.ServiceID == "com.vmware.cis.session" && req.Params.OperationID == "create" {
		op = func(c *call) (interface{}, *vapiError) { return c.login(sec) }
	}
	if op == nil {
		result = map[string]interface{}{"error": (&vapiError{"operation_not_found"}).encode()}
	} else if out, verr := op(c); verr != nil {
		result = map[string]interface{}{"error": verr.encode()}
	} else {
		result = map[string]interface{}{"output": out}
	}
	writeJSON(w, http.StatusOK, map[string]interface{}{"jsonrpc": "2.0", "id": req.ID, "result": result})
}

// unwrapVapi strips vAPI's type tags, leaving plain JSON with the field names the legacy
// routes use too (create_spec, object_id, ...).
func unwrapVapi(v interface{}) interface{} {
	switch x := v.(type) {
	case map[string]interface{}:
		if len(x) == 1 {
			for tag, inner := range x {
				switch tag {
				case "OPTIONAL", "SECRET":
					return unwrapVapi(inner)
				case "STRUCTURE":
					if fields, ok := inner.(map[string]interface{}); ok && len(fields) == 1 {
						for _, f := range fields {
							return unwrapVapi(f)
						}
					}
				}
			}
		}
		out := make(map[string]interface{}, len(x))
		for k, inner := range x {
			out[k] = unwrapVapi(inner)
		}
		return out
	case []interface{}:
		out := make([]interface{}, len(x))
		for i, inner := range x {
			out[i] = unwrapVapi(inner)
		}
		return out
	default:
		return v
	}
}

// login checks the user_pass security context like vCenter, then opens a legacy session.
func (c *call) login(sec map[string]interface{}) (interface{}, *vapiError) {
	user, _ := sec["userName"].(string)
	password, _ := sec["password"].(string)
	want, _ := c.bridge.user.Password()
	if user != c.bridge.user.Username() || password != want {
		return nil, &vapiError{"unauthenticated"}
	}
	req := httptest.NewRequest(http.MethodPost, restSession, nil)
	req.SetBasicAuth(user, password)
	var id string
	if verr := c.bridge.do(req, &id); verr != nil {
		return nil, verr
	}
	return map[string]interface{}{"SECRET": id}, nil
}

// legacy sends one request to vcsim's legacy routes with this call's session and decodes the
// "value" of its answer into out (if not nil).
func (c *call) legacy(method, path string, body interface{}, out interface{}) *vapiError {
	if c.session == "" {
		return &vapiError{"unauthenticated"}
	}
	var payload []byte
	if body != nil {
		payload, _ = json.Marshal(body)
	}
	req := httptest.NewRequest(method, path, bytes.NewReader(payload))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(sessionHeader, c.session)
	return c.bridge.do(req, out)
}

func (v *vapiBridge) do(req *http.Request, out interface{}) *vapiError {
	rec := httptest.NewRecorder()
	v.next.ServeHTTP(rec, req)
	switch rec.Code {
	case http.StatusOK:
	case http.StatusUnauthorized:
		return &vapiError{"unauthenticated"}
	case http.StatusNotFound:
		return &vapiError{"not_found"}
	case http.StatusBadRequest:
		var bad struct {
			Type string `json:"type"`
		}
		_ = json.Unmarshal(rec.Body.Bytes(), &bad)
		if name := strings.TrimPrefix(bad.Type, "com.vmware.vapi.std.errors."); name != bad.Type {
			return &vapiError{name}
		}
		return &vapiError{"invalid_argument"}
	default:
		return &vapiError{"error"}
	}
	if out == nil || rec.Body.Len() == 0 {
		return nil
	}
	var wrapped struct {
		Value json.RawMessage `json:"value"`
	}
	if json.Unmarshal(rec.Body.Bytes(), &wrapped) != nil {
		return &vapiError{"error"}
	}
	if len(wrapped.Value) == 0 {
		return nil
	}
	if json.Unmarshal(wrapped.Value, out) != nil {
		return &vapiError{"error"}
	}
	return nil
}

func (c *call) str(field string) string {
	s, _ := c.input[field].(string)
	return s
}

package main

// Extension points, so features of the bed live in files of their own: a file registers its
// SOAP hooks, control routes and HTTP path handlers from an init() function with register, and
// newBed/controlRoutes/ServeHTTP merge them with the core ones. Two registrations of the same
// SOAP method, control route or path prefix are a programming error and stop the bed at start.

import (
	"log"
	"net/http"
	"strings"
)

// extension is what one file adds; any field may be nil. Each function is called once, by
// newBed, with the bed being built.
type extension struct {
	name   string                                   // for error messages
	hooks  func(b *bed) map[string]soapHook         // SOAP method -> hook
	routes func(b *bed) map[string]controlFunc      // "METHOD endpoint" under /vmaccel-test/
	paths  func(b *bed) map[string]http.HandlerFunc // URL path prefix -> handler (before vcsim)
}

var extensions []extension

// register adds an extension; call it from init().
func register(e extension) {
	extensions = append(extensions, e)
}

// installExtensions merges every registered extension into the bed.
func (b *bed) installExtensions() {
	b.extraRoutes = map[string]controlFunc{}
	b.paths = map[string]http.HandlerFunc{}
	for _, e := range extensions {
		if e.hooks != nil {
			for method, h := range e.hooks(b) {
				if _, dup := b.hooks[method]; dup {
					log.Fatalf("extension %s: SOAP method %s is hooked twice", e.name, method)
				}
				b.hooks[method] = h
			}
		}
		if e.routes != nil {
			for route, f := range e.routes(b) {
				if _, dup := b.extraRoutes[route]; dup {
					log.Fatalf("extension %s: control route %s is registered twice", e.name, route)
				}
				b.extraRoutes[route] = f
			}
		}
		if e.paths != nil {
			for prefix, h := range e.paths(b) {
				if _, dup := b.paths[prefix]; dup {
					log.Fatalf("extension %s: path %s is registered twice", e.name, prefix)
				}
				b.paths[prefix] = h
			}
		}
	}
}

// pathHandler returns the extension handler whose prefix the request path starts with.
func (b *bed) pathHandler(r *http.Request) http.HandlerFunc {
	for prefix, h := range b.paths {
		if strings.HasPrefix(r.URL.Path, prefix) {
			return h
		}
	}
	return nil
}

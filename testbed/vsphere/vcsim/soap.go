package main

// SOAP plumbing for the layer in front of vcsim: peek at the method name of a request, decode
// it with govmomi's types, forward it to vcsim and inspect the answer, and write our own
// responses and faults in the envelope shape vcsim (and vCenter) use.

import (
	"bytes"
	stdxml "encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vim25/xml"
)

const vimNamespace = "urn:vim25"

// soapMethod returns the local name of the first element inside the SOAP Body, or "".
func soapMethod(body []byte) string {
	d := stdxml.NewDecoder(bytes.NewReader(body))
	inBody := false
	for {
		tok, err := d.Token()
		if err != nil {
			return ""
		}
		if start, ok := tok.(stdxml.StartElement); ok {
			if inBody {
				return start.Name.Local
			}
			inBody = start.Name.Local == "Body"
		}
	}
}

// decodeSOAP decodes the request into its govmomi request type (e.g. *types.CreateSnapshot_Task).
func decodeSOAP(body []byte) (*simulator.Method, error) {
	return simulator.UnmarshalBody(types.TypeFunc(), body)
}

// forward runs the request through vcsim and returns the recorded answer.
func forward(next http.Handler, r *http.Request, body []byte) *httptest.ResponseRecorder {
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))
	rec := httptest.NewRecorder()
	next.ServeHTTP(rec, r)
	return rec
}

// relay copies a recorded answer to the client.
func relay(w http.ResponseWriter, rec *httptest.ResponseRecorder) {
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}

// returnedRef extracts the ManagedObjectReference returned by a method such as Foo_Task.
func returnedRef(rec *httptest.ResponseRecorder) (types.ManagedObjectReference, bool) {
	d := stdxml.NewDecoder(bytes.NewReader(rec.Body.Bytes()))
	for {
		tok, err := d.Token()
		if err != nil {
			return types.ManagedObjectReference{}, false
		}
		start, ok := tok.(stdxml.StartElement)
		if !ok || start.Name.Local != "returnval" {
			continue
		}
		var ref struct {
			Type  string `xml:"type,attr"`
			Value string `xml:",chardata"`
		}
		if d.DecodeElement(&ref, &start) != nil || ref.Type == "" {
			return types.ManagedObjectReference{}, false
		}
		return types.ManagedObjectReference{Type: ref.Type, Value: ref.Value}, true
	}
}

type envelope struct {
	XMLName xml.Name    `xml:"soapenv:Envelope"`
	Enc     string      `xml:"xmlns:soapenc,attr"`
	Env     string      `xml:"xmlns:soapenv,attr"`
	XSD     string      `xml:"xmlns:xsd,attr"`
	XSI     string      `xml:"xmlns:xsi,attr"`
	Body    interface{} `xml:"soapenv:Body"`
}

// namedResponse encodes Value as the element <Name xmlns="urn:vim25">.
type namedResponse struct {
	Name  string
	Value interface{}
}

func (n namedResponse) MarshalXML(e *xml.Encoder, start xml.StartElement) error {
	if err := e.EncodeToken(start); err != nil {
		return err
	}
	inner := xml.StartElement{Name: xml.Name{Space: vimNamespace, Local: n.Name}}
	if err := e.EncodeElement(n.Value, inner); err != nil {
		return err
	}
	return e.EncodeToken(start.End())
}

type faultBody struct {
	XMLName xml.Name `xml:"soapenv:Fault"`
	Code    string   `xml:"faultcode"`
	String  string   `xml:"faultstring"`
	Detail  struct {
		Fault faultDetail
	} `xml:"detail"`
}

// faultDetail renders a fault as <FileFaultFault xsi:type="FileFault">, as vCenter does.
type faultDetail struct {
	Fault types.BaseMethodFault
}

func (d faultDetail) MarshalXML(e *xml.Encoder, start xml.StartElement) error {
	kind := reflect.TypeOf(d.Fault).Elem().Name()
	start.Name.Local = kind + "Fault"
	start.Attr = append(start.Attr,
		xml.Attr{Name: xml.Name{Local: "xmlns"}, Value: vimNamespace},
		xml.Attr{Name: xml.Name{Local: "xsi:type"}, Value: kind})
	return e.EncodeElement(d.Fault, start)
}

func writeEnvelope(w http.ResponseWriter, status int, body interface{}) {
	var out bytes.Buffer
	out.WriteString(xml.Header)
	err := xml.NewEncoder(&out).Encode(&envelope{
		Enc:  "http://schemas.xmlsoap.org/soap/encoding/",
		Env:  "http://schemas.xmlsoap.org/soap/envelope/",
		XSD:  "http://www.w3.org/2001/XMLSchema",
		XSI:  "http://www.w3.org/2001/XMLSchema-instance",
		Body: body,
	})
	if err != nil {
		http.Error(w, fmt.Sprintf("encoding SOAP response: %v", err), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(out.Bytes())
}

// writeResult answers a method call: res is the govmomi *Response type (e.g.
// types.QueryChangedDiskAreasResponse); its element is named after the Go type.
func writeResult(w http.ResponseWriter, res interface{}) {
	name := reflect.TypeOf(res).Name()
	writeEnvelope(w, http.StatusOK, namedResponse{Name: name, Value: res})
}

// writeTaskResult answers any Foo_Task call with the task it started.
func writeTaskResult(w http.ResponseWriter, method string, task types.ManagedObjectReference) {
	res := struct {
		Returnval types.ManagedObjectReference `xml:"returnval"`
	}{task}
	writeEnvelope(w, http.StatusOK, namedResponse{Name: method + "Response", Value: res})
}

// writeFault answers with a SOAP fault; pyVmomi raises it as the matching vim/vmodl class.
func writeFault(w http.ResponseWriter, msg string, fault types.BaseMethodFault) {
	body := faultBody{Code: "ServerFaultCode", String: msg}
	body.Detail.Fault = faultDetail{fault}
	writeEnvelope(w, http.StatusInternalServerError, struct{ Fault faultBody }{body})
}

package main

// The tagging operations of the vAPI bridge: one function per JSON-RPC operation, each a single
// legacy request plus the re-typing of its answer.

import (
	"net/http"
	"net/url"
)

type operation func(*call) (interface{}, *vapiError)

var operations = map[string]operation{
	"com.vmware.cis.session.delete": func(c *call) (interface{}, *vapiError) {
		return nil, c.legacy(http.MethodDelete, restSession, nil, nil)
	},
	"com.vmware.cis.tagging.category.create": func(c *call) (interface{}, *vapiError) {
		return c.create(restCategory)
	},
	"com.vmware.cis.tagging.category.list": func(c *call) (interface{}, *vapiError) {
		return c.list(http.MethodGet, restCategory, nil)
	},
	"com.vmware.cis.tagging.category.get": func(c *call) (interface{}, *vapiError) {
		return c.get(restCategory, c.str("category_id"), categoryModel)
	},
	"com.vmware.cis.tagging.category.delete": func(c *call) (interface{}, *vapiError) {
		return nil, c.legacy(http.MethodDelete, byID(restCategory, c.str("category_id"), ""), nil, nil)
	},
	"com.vmware.cis.tagging.tag.create": func(c *call) (interface{}, *vapiError) {
		return c.create(restTag)
	},
	"com.vmware.cis.tagging.tag.list": func(c *call) (interface{}, *vapiError) {
		return c.list(http.MethodGet, restTag, nil)
	},
	"com.vmware.cis.tagging.tag.get": func(c *call) (interface{}, *vapiError) {
		return c.get(restTag, c.str("tag_id"), tagModel)
	},
	"com.vmware.cis.tagging.tag.delete": func(c *call) (interface{}, *vapiError) {
		return nil, c.legacy(http.MethodDelete, byID(restTag, c.str("tag_id"), ""), nil, nil)
	},
	"com.vmware.cis.tagging.tag.list_tags_for_category": func(c *call) (interface{}, *vapiError) {
		path := byID(restTag, c.str("category_id"), "list-tags-for-category")
		return c.list(http.MethodPost, path, nil)
	},
	"com.vmware.cis.tagging.tag_association.attach": func(c *call) (interface{}, *vapiError) {
		return c.tagAction("attach")
	},
	"com.vmware.cis.tagging.tag_association.detach": func(c *call) (interface{}, *vapiError) {
		return c.tagAction("detach")
	},
	"com.vmware.cis.tagging.tag_association.list_attached_objects": listAttachedObjects,
	"com.vmware.cis.tagging.tag_association.list_attached_tags": func(c *call) (interface{}, *vapiError) {
		body := map[string]interface{}{"object_id": c.input["object_id"]}
		return c.list(http.MethodPost, byAction(restAssociation, "list-attached-tags"), body)
	},
	"com.vmware.cis.tagging.tag_association.list_attached_tags_on_objects": listAttachedTagsOnObjects,
	"com.vmware.cis.tagging.tag_association.list_attached_objects_on_tags": listAttachedObjectsOnTags,
}

func byID(base, id, action string) string {
	p := base + "/id:" + url.PathEscape(id)
	if action != "" {
		return byAction(p, action)
	}
	return p
}

func byAction(p, action string) string { return p + "?~action=" + action }

func (c *call) create(path string) (interface{}, *vapiError) {
	var id string
	body := map[string]interface{}{"create_spec": c.input["create_spec"]}
	return id, c.legacy(http.MethodPost, path, body, &id)
}

// list returns the ids the legacy route answers; vcsim encodes "none" as null, vAPI as [].
func (c *call) list(method, path string, body interface{}) (interface{}, *vapiError) {
	ids := []string{}
	if verr := c.legacy(method, path, body, &ids); verr != nil {
		return nil, verr
	}
	if ids == nil {
		ids = []string{}
	}
	return ids, nil
}

func (c *call) get(base, id string, model func(map[string]interface{}) interface{}) (interface{}, *vapiError) {
	var obj map[string]interface{}
	if verr := c.legacy(http.MethodGet, byID(base, id, ""), nil, &obj); verr != nil {
		return nil, verr
	}
	return model(obj), nil
}

func (c *call) tagAction(action string) (interface{}, *vapiError) {
	body := map[string]interface{}{"object_id": c.input["object_id"]}
	return nil, c.legacy(http.MethodPost, byID(restAssociation, c.str("tag_id"), action), body, nil)
}

func listAttachedObjects(c *call) (interface{}, *vapiError) {
	var objs []map[string]interface{}
	path := byID(restAssociation, c.str("tag_id"), "list-attached-objects")
	if verr := c.legacy(http.MethodPost, path, map[string]interface{}{}, &objs); verr != nil {
		return nil, verr
	}
	out := []interface{}{}
	for _, o := range objs {
		out = append(out, dynamicID(o))
	}
	return out, nil
}

func listAttachedTagsOnObjects(c *call) (interface{}, *vapiError) {
	var res []struct {
		ObjectID map[string]interface{} `json:"object_id"`
		TagIDs   []string               `json:"tag_ids"`
	}
	body := map[string]interface{}{"object_ids": c.input["object_ids"]}
	path := byAction(restAssociation, "list-attached-tags-on-objects")
	if verr := c.legacy(http.MethodPost, path, body, &res); verr != nil {
		return nil, verr
	}
	out := []interface{}{}
	for _, r := range res {
		out = append(out, structure("com.vmware.cis.tagging.tag_association.object_to_tags",
			map[string]interface{}{"object_id": dynamicID(r.ObjectID), "tag_ids": nonNil(r.TagIDs)}))
	}
	return out, nil
}

func listAttachedObjectsOnTags(c *call) (interface{}, *vapiError) {
	var res []struct {
		TagID     string                   `json:"tag_id"`
		ObjectIDs []map[string]interface{} `json:"object_ids"`
	}
	body := map[string]interface{}{"tag_ids": c.input["tag_ids"]}
	path := byAction(restAssociation, "list-attached-objects-on-tags")
	if verr := c.legacy(http.MethodPost, path, body, &res); verr != nil {
		return nil, verr
	}
	out := []interface{}{}
	for _, r := range res {
		objs := []interface{}{}
		for _, o := range r.ObjectIDs {
			objs = append(objs, dynamicID(o))
		}
		out = append(out, structure("com.vmware.cis.tagging.tag_association.tag_to_objects",
			map[string]interface{}{"tag_id": r.TagID, "object_ids": objs}))
	}
	return out, nil
}

func structure(name string, fields map[string]interface{}) interface{} {
	return map[string]interface{}{"STRUCTURE": map[string]interface{}{name: fields}}
}

func dynamicID(o map[string]interface{}) interface{} {
	return structure("com.vmware.vapi.std.dynamic_ID",
		map[string]interface{}{"type": o["type"], "id": o["id"]})
}

func nonNil(ids []string) []string {
	if ids == nil {
		return []string{}
	}
	return ids
}

func field(obj map[string]interface{}, name string, dflt interface{}) interface{} {
	if v, ok := obj[name]; ok && v != nil {
		return v
	}
	return dflt
}

func categoryModel(obj map[string]interface{}) interface{} {
	return structure("com.vmware.cis.tagging.category_model", map[string]interface{}{
		"id":               field(obj, "id", ""),
		"name":             field(obj, "name", ""),
		"description":      field(obj, "description", ""),
		"cardinality":      field(obj, "cardinality", "MULTIPLE"),
		"associable_types": field(obj, "associable_types", []interface{}{}),
		"used_by":          field(obj, "used_by", []interface{}{}),
	})
}

func tagModel(obj map[string]interface{}) interface{} {
	return structure("com.vmware.cis.tagging.tag_model", map[string]interface{}{
		"id":          field(obj, "id", ""),
		"category_id": field(obj, "category_id", ""),
		"name":        field(obj, "name", ""),
		"description": field(obj, "description", ""),
		"used_by":     field(obj, "used_by", []interface{}{}),
	})
}

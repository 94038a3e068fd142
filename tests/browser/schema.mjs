// A small JSON Schema (2020-12) validator for docs/protocol.schema.json:
// the keywords that schema uses, and an error for any other, so the schema
// never says more than is checked.
const ANNOTATIONS = new Set(["$schema", "$id", "title", "description", "$defs"]);

const TYPES = {
  string: (v) => typeof v === "string",
  integer: (v) => Number.isInteger(v),
  number: (v) => typeof v === "number" && Number.isFinite(v),
  boolean: (v) => typeof v === "boolean",
  object: (v) => v !== null && typeof v === "object" && !Array.isArray(v),
  array: (v) => Array.isArray(v),
  null: (v) => v === null,
};

/** `check(definition, value)`: the errors of `value` against
 *  `#/$defs/<definition>` of `root` (an empty list when it is valid). */
export function validator(root) {
  const resolve = (ref) => {
    const match = /^#\/\$defs\/([A-Za-z0-9_]+)$/.exec(ref);
    if (!match || !root.$defs[match[1]]) throw new Error(`unknown $ref ${ref}`);
    return root.$defs[match[1]];
  };
  function validate(schema, value, path, errors) {
    for (const [keyword, rule] of Object.entries(schema)) {
      const fail = (text) => errors.push(`${path || "/"}: ${text}`);
      switch (keyword) {
        case "$ref": validate(resolve(rule), value, path, errors); break;
        case "type":
          if (!TYPES[rule]) throw new Error(`unknown type ${rule}`);
          if (!TYPES[rule](value)) fail(`not ${rule}: ${JSON.stringify(value)}`);
          break;
        case "const": if (value !== rule) fail(`not ${JSON.stringify(rule)}`); break;
        case "enum": if (!rule.includes(value)) fail(`not one of ${rule.join(", ")}: ${JSON.stringify(value)}`); break;
        case "pattern": if (typeof value === "string" && !new RegExp(rule, "u").test(value)) fail(`${JSON.stringify(value)} does not match ${rule}`); break;
        case "minimum": if (typeof value === "number" && value < rule) fail(`below ${rule}`); break;
        case "exclusiveMinimum": if (typeof value === "number" && value <= rule) fail(`not above ${rule}`); break;
        case "required":
          if (TYPES.object(value)) for (const name of rule) if (!(name in value)) fail(`missing ${name}`);
          break;
        case "properties":
          if (TYPES.object(value)) {
            for (const [name, sub] of Object.entries(rule)) if (name in value) validate(sub, value[name], `${path}/${name}`, errors);
          }
          break;
        case "items":
          if (Array.isArray(value)) value.forEach((item, i) => validate(rule, item, `${path}/${i}`, errors));
          break;
        case "anyOf":
        case "oneOf": {
          const passing = rule.filter((sub) => { const e = []; validate(sub, value, path, e); return e.length === 0; }).length;
          if (keyword === "anyOf" ? passing === 0 : passing !== 1) fail(`${keyword}: ${passing} of ${rule.length} match`);
          break;
        }
        default:
          if (!ANNOTATIONS.has(keyword)) throw new Error(`the validator does not know ${keyword}`);
      }
    }
    return errors;
  }
  return (definition, value) => validate(resolve(`#/$defs/${definition}`), value, "", []);
}

// Every security requirement names a scheme of components.securitySchemes, and what its array lists is what OpenAPI 3.1
// allows there (4.8.30, Security Requirement Object): an oauth2 scheme's scopes must be among its flows' scopes; for
// any other scheme the array MAY list role names, here one of the roles the ruleset names (functionOptions.roles).
// spectral:oas's oas3-operation-security-defined reads every entry as an oauth2 scope, as OpenAPI 3.0 did.
export default (requirement, options, context) => {
  if (requirement === null || typeof requirement !== 'object') return [];
  const doc = context.document.data;
  const schemes = (doc && doc.components && doc.components.securitySchemes) || {};
  const roles = (options && options.roles) || [];
  const results = [];
  for (const [name, entries] of Object.entries(requirement)) {
    const scheme = schemes[name];
    if (scheme === undefined) {
      results.push({ message: `security scheme "${name}" is not defined in components.securitySchemes`, path: [...context.path, name] });
      continue;
    }
    if (!Array.isArray(entries)) {
      results.push({ message: `security requirement "${name}" must be an array`, path: [...context.path, name] });
      continue;
    }
    entries.forEach((entry, i) => {
      const path = [...context.path, name, i];
      if (scheme.type === 'oauth2') {
        const flows = Object.values(scheme.flows || {});
        if (!flows.some(flow => flow && flow.scopes && Object.hasOwn(flow.scopes, entry)))
          results.push({ message: `"${entry}" is not a scope of the oauth2 scheme "${name}"`, path });
      } else if (scheme.type !== 'openIdConnect' && !roles.includes(entry)) {
        results.push({ message: `"${entry}" is not a role (${roles.join(', ')}) for scheme "${name}"`, path });
      }
    });
  }
  return results;
};

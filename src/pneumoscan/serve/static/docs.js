// Swagger UI from the package's own files (swagger-ui-bundle), so /docs works offline.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  if (typeof SwaggerUIBundle === "undefined") {
    document.getElementById("swagger-ui").textContent =
      "Swagger UI is not installed (pip install 'pneumoscan[serve]'); the schema is at /openapi.json.";
    return;
  }
  SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true });
});

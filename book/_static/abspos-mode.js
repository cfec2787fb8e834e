// The theme reads <html data-mode> when the page has loaded; Jupyter Book leaves it unset, which the
// theme reports as "Got invalid theme mode". Set it from the reader's last choice, else "light".
document.documentElement.dataset.mode = localStorage.getItem("mode") || "light";

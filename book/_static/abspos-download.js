// The ".py" entry that book/_ext/abspos_pages.py adds to a chapter's download menu links the chapter's
// jupytext source beside the page's other sources. A plain link works offline, from file:// and over HTTP;
// the download attribute (as Sphinx's {download} role sets it) asks the browser to save it as NN_name.py
// rather than show it, where the browser honours that (same-origin HTTP; file:// shows the text).
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("a.btn-download-py-button").forEach(function (link) {
    link.setAttribute("download", link.getAttribute("href").split("/").pop());
  });
});

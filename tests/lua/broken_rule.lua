-- A rule with a typo in a hook name: wfpr rules check must say so.
function on_connect(conn) return pass end
function on_conect(conn) return block end

# bash completion for wfpr: the commands, each command's options, and
# files where an option takes one. Installed to
# share/bash-completion/completions/wfpr.

_wfpr()
{
	local cur prev words cword
	_init_completion 2>/dev/null || {
		cur=${COMP_WORDS[COMP_CWORD]}
		prev=${COMP_WORDS[COMP_CWORD-1]}
		words=("${COMP_WORDS[@]}")
		cword=$COMP_CWORD
	}
	local match="--proto --dport --dst --exclude-dst --uid --comm --exe --cgroup --weight"
	if [[ $cword -eq 1 ]]; then
		COMPREPLY=($(compgen -W "run daemon proxy redirector broker ebpf inspect rules --version --help" -- "$cur"))
		return
	fi
	case $prev in
	--rules | --log | --key-file | --control | --socket | --broker | --exe | --record)
		COMPREPLY=($(compgen -f -- "$cur"))
		return ;;
	--cgroup)
		COMPREPLY=($(compgen -d -- "$cur"))
		return ;;
	--backend)
		COMPREPLY=($(compgen -W "preload ebpf" -- "$cur"))
		return ;;
	--proto)
		COMPREPLY=($(compgen -W "tcp udp" -- "$cur"))
		return ;;
	esac
	local opts
	case ${words[1]} in
	run)
		# after --, the command and its arguments
		local i
		for ((i = 2; i < cword; i++)); do
			[[ ${words[i]} == -- ]] && { COMPREPLY=($(compgen -c -- "$cur")); return; }
		done
		opts="--rules --proxy --backend --log --fail-closed --idle-timeout --udp-idle-timeout --workers --buffer
		      --rule-time-limit --record -- $match" ;;
	daemon) opts="--cgroup --control --fail-closed --udp-idle-timeout" ;;
	proxy)
		opts="--name --backend --control --broker --key-file --rules --listen --log --idle-timeout --udp-idle-timeout
		      --buffer --workers --rule-time-limit --record $match" ;;
	redirector)
		if [[ $cword -eq 2 ]]; then
			COMPREPLY=($(compgen -W "add run remove list" -- "$cur"))
			return
		fi
		case ${words[2]} in
		add) opts="--name --listen --listen6 --pid --cgroup --client-cgroup --control $match" ;;
		run) opts="--broker --name --listen --key-file --weight -- $match" ;;
		remove) opts="--name --control" ;;
		list) opts="--control" ;;
		esac ;;
	broker) opts="--socket --key-file" ;;
	ebpf)
		if [[ $cword -eq 2 ]]; then
			COMPREPLY=($(compgen -W "status cleanup" -- "$cur"))
			return
		fi
		opts="--control --all" ;;
	rules)
		if [[ $cword -eq 2 ]]; then
			COMPREPLY=($(compgen -W "check test" -- "$cur"))
		else
			COMPREPLY=($(compgen -f -- "$cur"))
		fi
		return ;;
	inspect)
		COMPREPLY=($(compgen -W "-" -- "$cur"))
		return ;;
	esac
	COMPREPLY=($(compgen -W "$opts --help" -- "$cur"))
}
complete -F _wfpr wfpr

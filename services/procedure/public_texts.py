"""The words of the EOs' public page and feed, in French, English and German. Phrases only: what is said is
decided in :mod:`services.procedure.public`. Every language has every key (tests/unit/test_procedure_public.py).
The advice phrases say what the notices say (services/notifier/templates/eo/<lang>/_phrases.txt)."""

from __future__ import annotations

from collections.abc import Mapping

from shared.events import Language

__all__ = ["PHRASES"]

_FR = {
    "lang_name": "Français",
    "title": "LUCCS : état du système pour les opérateurs économiques",
    "intro": "Cette page indique si LUCCS peut recevoir vos déclarations en douane, quelle procédure de secours "
             "est en vigueur et ce que vous devez faire maintenant.",
    "updated": "Mis à jour le",
    "channels": "Canaux de LUCCS",
    "ada_b2g": "Canal B2G (AS4) de l'administration des douanes (ADA)",
    "ntp": "Portail national des opérateurs (NTP)",
    "state_up": "disponible",
    "state_down": "indisponible",
    "state_unknown": "état inconnu : notre surveillance ne peut pas le confirmer pour le moment",
    "state_maintenance": "indisponible : maintenance planifiée",
    "now": "Que faire maintenant",
    "advice_lodge_in_ntp": "Déposez vos déclarations en douane dans le Portail national des opérateurs (NTP), "
                           "qui reste ouvert, jusqu'à ce que le B2G fonctionne à nouveau.",
    "advice_lodge_in_ntp_unconfirmed": "Déposez vos déclarations en douane dans le Portail national des "
                                       "opérateurs (NTP). Notre surveillance ne peut pas confirmer pour le "
                                       "moment que le NTP est disponible : s'il ne répond pas, contactez le "
                                       "Servicedesk eDouane, qui vous indiquera comment procéder.",
    "advice_ask_servicedesk": "Le Portail national des opérateurs (NTP) est lui aussi indisponible : ne comptez "
                              "pas dessus. Contactez le Servicedesk eDouane, qui vous indiquera comment procéder.",
    "advice_contact_bureau": "Contactez le Bureau de recette Douanes et suivez ses recommandations pour vos "
                             "déclarations. N'utilisez ni le NTP ni le B2G tant qu'il ne vous est pas annoncé "
                             "que LUCCS est à nouveau disponible.",
    "advice_resume_b2g": "Aucune procédure de secours n'est en vigueur : déposez vos déclarations en douane "
                         "par B2G (AS4), comme d'habitude.",
    "advice_b2g_unconfirmed": "Aucune procédure de secours n'est en vigueur : déposez vos déclarations en douane "
                              "par B2G (AS4), comme d'habitude. Notre surveillance ne peut pas confirmer pour le "
                              "moment que le B2G est disponible : s'il ne répond pas, contactez le Servicedesk "
                              "eDouane, qui vous indiquera comment procéder.",
    "procedure": "Procédure de secours nationale",
    "no_procedure": "Aucune procédure de secours nationale n'est en vigueur.",
    "in_force_since": "En vigueur depuis le",
    "planned": "maintenance planifiée",
    "scenario_ADA_B2G_UNAVAILABLE": "le canal B2G (AS4) des douanes est indisponible",
    "scenario_LUCCS_UNAVAILABLE": "LUCCS est indisponible (B2G et NTP) : cas d'exception",
    "maintenances": "Maintenances planifiées",
    "no_maintenance": "Aucune maintenance n'est planifiée.",
    "component_ada_b2g": "canal B2G (AS4) des douanes",
    "component_ntp": "Portail national des opérateurs (NTP)",
    "component_luccs": "LUCCS (B2G et NTP)",
    "mstate_scheduled": "planifiée",
    "mstate_active": "en cours",
    "mstate_done": "terminée",
    "mstate_cancelled": "annulée",
    "from": "du",
    "to": "au",
    "history": "Procédures nationales des 30 derniers jours",
    "no_history": "Aucune procédure nationale ces 30 derniers jours.",
    "col_start": "Début",
    "col_end": "Fin",
    "col_scenario": "Situation",
    "still_in_force": "en vigueur",
    "feed": "Flux Atom de ces informations",
    "feed_title": "LUCCS : procédures de secours et maintenances",
    "feed_opened": "Procédure de secours ouverte",
    "feed_closed": "Procédure de secours close",
    "feed_closed_summary": "La procédure de secours est close. Déposez vos déclarations comme indiqué sur la "
                           "page d'état.",
    "feed_broadcast_servicedesk": "Message du Servicedesk eDouane",
    "feed_broadcast_bureau": "Message du Bureau de recette Douanes",
    "feed_maintenance": "Maintenance",
    "times": "heure de Luxembourg",
}

_EN = {
    "lang_name": "English",
    "title": "LUCCS: system status for economic operators",
    "intro": "This page tells you whether LUCCS can receive your customs declarations, which fallback procedure "
             "is in force and what you must do now.",
    "updated": "Updated",
    "channels": "LUCCS channels",
    "ada_b2g": "B2G (AS4) channel of the customs administration (ADA)",
    "ntp": "National Trader Portal (NTP)",
    "state_up": "available",
    "state_down": "unavailable",
    "state_unknown": "unknown: our monitoring cannot confirm it at the moment",
    "state_maintenance": "unavailable: planned maintenance",
    "now": "What to do now",
    "advice_lodge_in_ntp": "Lodge your customs declarations in the National Trader Portal (NTP), which stays "
                           "open, until B2G works again.",
    "advice_lodge_in_ntp_unconfirmed": "Lodge your customs declarations in the National Trader Portal (NTP). Our "
                                       "monitoring cannot confirm at the moment that NTP is available: if it "
                                       "does not respond, contact the Servicedesk eDouane, which will tell you "
                                       "how to proceed.",
    "advice_ask_servicedesk": "The National Trader Portal (NTP) is unavailable too, so do not count on it: "
                              "contact the Servicedesk eDouane, which will tell you how to proceed.",
    "advice_contact_bureau": "Contact the Bureau de recette Douanes and follow its recommendations for your "
                             "declarations. Use neither NTP nor B2G until you are told that LUCCS is available "
                             "again.",
    "advice_resume_b2g": "No fallback procedure is in force: lodge your customs declarations over B2G (AS4), "
                         "as usual.",
    "advice_b2g_unconfirmed": "No fallback procedure is in force: lodge your customs declarations over B2G "
                              "(AS4), as usual. Our monitoring cannot confirm at the moment that B2G is "
                              "available: if it does not respond, contact the Servicedesk eDouane, which will "
                              "tell you how to proceed.",
    "procedure": "National fallback procedure",
    "no_procedure": "No national fallback procedure is in force.",
    "in_force_since": "In force since",
    "planned": "planned maintenance",
    "scenario_ADA_B2G_UNAVAILABLE": "the customs B2G (AS4) channel is unavailable",
    "scenario_LUCCS_UNAVAILABLE": "LUCCS is unavailable (B2G and NTP): the exception case",
    "maintenances": "Planned maintenance",
    "no_maintenance": "No maintenance is planned.",
    "component_ada_b2g": "customs B2G (AS4) channel",
    "component_ntp": "National Trader Portal (NTP)",
    "component_luccs": "LUCCS (B2G and NTP)",
    "mstate_scheduled": "scheduled",
    "mstate_active": "in progress",
    "mstate_done": "over",
    "mstate_cancelled": "cancelled",
    "from": "from",
    "to": "to",
    "history": "National procedures of the last 30 days",
    "no_history": "No national procedure in the last 30 days.",
    "col_start": "Start",
    "col_end": "End",
    "col_scenario": "Situation",
    "still_in_force": "in force",
    "feed": "Atom feed of this information",
    "feed_title": "LUCCS: fallback procedures and maintenance",
    "feed_opened": "Fallback procedure opened",
    "feed_closed": "Fallback procedure closed",
    "feed_closed_summary": "The fallback procedure is closed. Lodge your declarations as the status page says.",
    "feed_broadcast_servicedesk": "Message from the Servicedesk eDouane",
    "feed_broadcast_bureau": "Message from the Bureau de recette Douanes",
    "feed_maintenance": "Maintenance",
    "times": "Luxembourg time",
}

_DE = {
    "lang_name": "Deutsch",
    "title": "LUCCS: Systemstatus für Wirtschaftsbeteiligte",
    "intro": "Diese Seite zeigt, ob LUCCS Ihre Zollanmeldungen empfangen kann, welches Ausweichverfahren gilt "
             "und was Sie jetzt tun müssen.",
    "updated": "Stand",
    "channels": "Kanäle von LUCCS",
    "ada_b2g": "B2G-Kanal (AS4) der Zollverwaltung (ADA)",
    "ntp": "Nationales Händlerportal (NTP)",
    "state_up": "verfügbar",
    "state_down": "nicht verfügbar",
    "state_unknown": "unbekannt: unsere Überwachung kann es derzeit nicht bestätigen",
    "state_maintenance": "nicht verfügbar: geplante Wartung",
    "now": "Was Sie jetzt tun müssen",
    "advice_lodge_in_ntp": "Reichen Sie Ihre Zollanmeldungen im Nationalen Händlerportal (NTP) ein, das "
                           "geöffnet bleibt, bis B2G wieder funktioniert.",
    "advice_lodge_in_ntp_unconfirmed": "Reichen Sie Ihre Zollanmeldungen im Nationalen Händlerportal (NTP) ein. "
                                       "Unsere Überwachung kann derzeit nicht bestätigen, dass das NTP verfügbar "
                                       "ist: Wenn es nicht antwortet, wenden Sie sich an den Servicedesk "
                                       "eDouane, der Ihnen das weitere Vorgehen mitteilt.",
    "advice_ask_servicedesk": "Das Nationale Händlerportal (NTP) ist ebenfalls nicht verfügbar, rechnen Sie "
                              "nicht damit: Wenden Sie sich an den Servicedesk eDouane, der Ihnen das weitere "
                              "Vorgehen mitteilt.",
    "advice_contact_bureau": "Wenden Sie sich an das Bureau de recette Douanes und folgen Sie seinen "
                             "Empfehlungen für Ihre Anmeldungen. Nutzen Sie weder NTP noch B2G, bis Ihnen "
                             "mitgeteilt wird, dass LUCCS wieder verfügbar ist.",
    "advice_resume_b2g": "Es gilt kein Ausweichverfahren: Reichen Sie Ihre Zollanmeldungen wie gewohnt über "
                         "B2G (AS4) ein.",
    "advice_b2g_unconfirmed": "Es gilt kein Ausweichverfahren: Reichen Sie Ihre Zollanmeldungen wie gewohnt über "
                              "B2G (AS4) ein. Unsere Überwachung kann derzeit nicht bestätigen, dass B2G "
                              "verfügbar ist: Wenn es nicht antwortet, wenden Sie sich an den Servicedesk "
                              "eDouane, der Ihnen das weitere Vorgehen mitteilt.",
    "procedure": "Nationales Ausweichverfahren",
    "no_procedure": "Es gilt kein nationales Ausweichverfahren.",
    "in_force_since": "In Kraft seit",
    "planned": "geplante Wartung",
    "scenario_ADA_B2G_UNAVAILABLE": "der B2G-Kanal (AS4) des Zolls ist nicht verfügbar",
    "scenario_LUCCS_UNAVAILABLE": "LUCCS ist nicht verfügbar (B2G und NTP): der Ausnahmefall",
    "maintenances": "Geplante Wartungen",
    "no_maintenance": "Es ist keine Wartung geplant.",
    "component_ada_b2g": "B2G-Kanal (AS4) des Zolls",
    "component_ntp": "Nationales Händlerportal (NTP)",
    "component_luccs": "LUCCS (B2G und NTP)",
    "mstate_scheduled": "geplant",
    "mstate_active": "läuft",
    "mstate_done": "beendet",
    "mstate_cancelled": "abgesagt",
    "from": "von",
    "to": "bis",
    "history": "Nationale Verfahren der letzten 30 Tage",
    "no_history": "Kein nationales Verfahren in den letzten 30 Tagen.",
    "col_start": "Beginn",
    "col_end": "Ende",
    "col_scenario": "Lage",
    "still_in_force": "in Kraft",
    "feed": "Atom-Feed dieser Informationen",
    "feed_title": "LUCCS: Ausweichverfahren und Wartungen",
    "feed_opened": "Ausweichverfahren eröffnet",
    "feed_closed": "Ausweichverfahren beendet",
    "feed_closed_summary": "Das Ausweichverfahren ist beendet. Reichen Sie Ihre Anmeldungen so ein, wie es die "
                           "Statusseite angibt.",
    "feed_broadcast_servicedesk": "Mitteilung des Servicedesk eDouane",
    "feed_broadcast_bureau": "Mitteilung des Bureau de recette Douanes",
    "feed_maintenance": "Wartung",
    "times": "Luxemburger Zeit",
}

PHRASES: Mapping[Language, Mapping[str, str]] = {Language.FR: _FR, Language.EN: _EN, Language.DE: _DE}
